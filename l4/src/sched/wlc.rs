//! Weighted least connections (IPVS `wlc`).
//!
//! Each available server's *overhead* is `active * 256 + inactive` (established connections cost far
//! more than half-open or closing ones); the pick minimises `overhead / weight`, comparing by
//! cross-multiplication in 128-bit integers (no division, no overflow). Ties are broken round robin:
//! the scan starts just after the previous pick, so equally loaded servers take turns (IPVS takes the
//! first in list order; rotating matters here because each worker's counts lag behind its picks).

use super::ServerView;

/// Weighted least-connection scheduler state: only the tie-breaking rotation.
#[derive(Debug, Clone, Default)]
pub struct WeightedLeastConn {
    /// Where the next scan starts (one past the previous pick).
    next: usize,
}

/// IPVS overhead: established connections weigh 256 times more than the others.
#[inline]
fn overhead(s: &ServerView) -> u64 {
    (u64::from(s.active) << 8) + u64::from(s.inactive)
}

impl WeightedLeastConn {
    /// Creates the scheduler.
    pub fn new(_servers: &[ServerView]) -> WeightedLeastConn {
        WeightedLeastConn { next: 0 }
    }

    /// Nothing to precompute: loads are read from the views at each pick.
    pub fn rebuild(&mut self, servers: &[ServerView]) {
        if self.next >= servers.len() {
            self.next = 0;
        }
    }

    /// The available server with the least `overhead / weight`, ties broken round robin, or `None`.
    /// O(n), no allocation.
    pub fn pick(&mut self, servers: &[ServerView]) -> Option<usize> {
        let n = servers.len();
        let start = if self.next < n { self.next } else { 0 };
        let mut best: Option<usize> = None;
        for i in (start..n).chain(0..start) {
            let s = &servers[i];
            if !s.available() {
                continue;
            }
            // s is strictly better than b iff overhead(s)/w(s) < overhead(b)/w(b).
            let better = best.is_none_or(|b| {
                let b = &servers[b];
                u128::from(overhead(s)) * u128::from(b.weight) < u128::from(overhead(b)) * u128::from(s.weight)
            });
            if better {
                best = Some(i);
            }
        }
        let i = best?;
        self.next = i + 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testutil::{histogram, servers};

    #[test]
    fn picks_least_loaded_relative_to_weight() {
        let mut srv = servers(&[1, 3, 1]);
        srv[0].active = 2; // 512 / 1
        srv[1].active = 4; // 1024 / 3 ≈ 341: the least loaded despite the most connections
        srv[2].active = 1; // 256 / 1 + 200 inactive = 456
        srv[2].inactive = 200;
        let mut s = WeightedLeastConn::new(&srv);
        assert_eq!(s.pick(&srv), Some(1));
        // Inactive connections count 1/256 of an active one.
        srv[1].inactive = 400; // (1024 + 400) / 3 = 474.7 > 456
        assert_eq!(s.pick(&srv), Some(2));
    }

    #[test]
    fn converges_to_weight_ratio_when_picks_become_connections() {
        let mut srv = servers(&[1, 2, 5]);
        let mut s = WeightedLeastConn::new(&srv);
        for _ in 0..800 {
            let i = s.pick(&srv).unwrap();
            srv[i].active += 1;
        }
        let counts: Vec<u32> = srv.iter().map(|v| v.active).collect();
        assert_eq!(counts, [100, 200, 500]);
    }

    #[test]
    fn ties_rotate_instead_of_piling_on_the_first_server() {
        // With counts not updated between picks (another worker's view), equal loads take turns.
        let srv = servers(&[2, 2, 2]);
        let mut s = WeightedLeastConn::new(&srv);
        let picks: Vec<usize> = (0..6).map(|_| s.pick(&srv).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let h = histogram(3, (0..300).map(|_| s.pick(&srv).unwrap()));
        assert_eq!(h, [100, 100, 100]);
    }

    #[test]
    fn skips_unavailable_even_when_idle() {
        let mut srv = servers(&[1, 1, 1]);
        srv[0].healthy = false; // idle but down
        srv[1].weight = 0; // idle but draining
        srv[2].active = 1_000_000;
        let mut s = WeightedLeastConn::new(&srv);
        assert_eq!(s.pick(&srv), Some(2));
    }

    #[test]
    fn extreme_counts_and_weights_do_not_overflow() {
        let mut srv = servers(&[u32::MAX, 1]);
        srv[0].active = u32::MAX;
        srv[0].inactive = u32::MAX;
        srv[1].active = u32::MAX / 2;
        let mut s = WeightedLeastConn::new(&srv);
        assert_eq!(s.pick(&srv), Some(0));
    }
}
