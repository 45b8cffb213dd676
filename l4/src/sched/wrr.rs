//! Interleaved weighted round robin (IPVS `wrr`).
//!
//! A cursor walks the list in passes with a *current weight* `cw`: a pass picks, in order, every
//! available server whose weight is `>= cw`. Each time the cursor wraps, `cw` drops by the gcd of the
//! weights; when it would reach 0 it restarts at the maximum weight. Weights 4,3,2 thus give the
//! sequence `0 0 1 0 1 2 0 1 2`: exact weight ratios per cycle, with the servers interleaved.

use super::ServerView;

/// Weighted round-robin scheduler state.
///
/// `max_weight` and `gcd` are computed over the available servers by [`rebuild`](Self::rebuild).
#[derive(Debug, Clone)]
pub struct WeightedRoundRobin {
    /// Next index to examine; `>= len` means "wrap on the next step".
    pos: usize,
    /// Current weight of the pass in progress (0 before the first pick).
    cw: u32,
    /// Maximum weight over available servers (0: none available).
    max_weight: u32,
    /// Greatest common divisor of the available servers' weights.
    gcd: u32,
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedRoundRobin {
    /// Creates the scheduler; the first pick returns the first server of maximum weight.
    pub fn new(servers: &[ServerView]) -> WeightedRoundRobin {
        let mut s = WeightedRoundRobin {
            pos: usize::MAX,
            cw: 0,
            max_weight: 0,
            gcd: 0,
        };
        s.rebuild(servers);
        s
    }

    /// Recomputes the maximum weight and gcd and restarts the sequence (as IPVS does when a server
    /// changes). Does not allocate.
    pub fn rebuild(&mut self, servers: &[ServerView]) {
        self.recompute(servers);
        self.pos = usize::MAX;
        self.cw = 0;
    }

    /// Recomputes `max_weight` and `gcd` over the available servers, keeping the position.
    fn recompute(&mut self, servers: &[ServerView]) {
        let available = servers.iter().filter(|s| s.available());
        self.max_weight = available.clone().map(|s| s.weight).max().unwrap_or(0);
        self.gcd = available.fold(0, |g, s| gcd(g, s.weight));
        self.cw = self.cw.min(self.max_weight);
    }

    /// The next server of the interleaved weighted sequence, or `None`. No allocation.
    ///
    /// After a `rebuild` this takes at most `2n` steps. If the servers changed without a `rebuild` and
    /// the bound is exceeded, the weights are recomputed in place (O(n), no allocation) and the scan
    /// retried once, so stale state costs time but never loops forever or returns an unavailable index.
    pub fn pick(&mut self, servers: &[ServerView]) -> Option<usize> {
        if servers.is_empty() {
            return None;
        }
        if self.max_weight == 0 {
            self.recompute(servers);
            if self.max_weight == 0 {
                return None;
            }
        }
        if let Some(i) = self.scan(servers) {
            return Some(i);
        }
        self.recompute(servers);
        if self.max_weight == 0 {
            return None;
        }
        self.scan(servers)
    }

    /// Advances the cursor until a server qualifies for the current weight, for at most `2n + 2` steps.
    fn scan(&mut self, servers: &[ServerView]) -> Option<usize> {
        let n = servers.len();
        for _ in 0..2 * n + 2 {
            if self.pos >= n {
                self.pos = 0;
                self.cw = if self.cw > self.gcd {
                    self.cw - self.gcd
                } else {
                    self.max_weight
                };
            }
            let i = self.pos;
            self.pos += 1;
            let s = &servers[i];
            if s.available() && s.weight >= self.cw {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testutil::{histogram, servers};

    fn sequence(weights: &[u32], len: usize) -> Vec<usize> {
        let srv = servers(weights);
        let mut s = WeightedRoundRobin::new(&srv);
        (0..len).map(|_| s.pick(&srv).unwrap()).collect()
    }

    #[test]
    fn weights_1_1_2_give_exact_ratio_over_3000_picks() {
        let srv = servers(&[1, 1, 2]);
        let mut s = WeightedRoundRobin::new(&srv);
        let h = histogram(3, (0..3000).map(|_| s.pick(&srv).unwrap()));
        assert_eq!(h, [750, 750, 1500]);
    }

    #[test]
    fn weights_1_3_are_interleaved() {
        // Not "0 1 1 1": the heavy server is interleaved with the light one.
        assert_eq!(sequence(&[1, 3], 8), [1, 1, 0, 1, 1, 1, 0, 1]);
    }

    #[test]
    fn ipvs_reference_sequence_and_gcd() {
        assert_eq!(sequence(&[4, 3, 2], 9), [0, 0, 1, 0, 1, 2, 0, 1, 2]);
        // gcd 2: cw goes 4, 2 (not 4, 3, 2, 1), so the cycle is 1 0 1 and not 1 1 0 1 1 0.
        assert_eq!(sequence(&[2, 4], 6), [1, 0, 1, 1, 0, 1]);
        // Equal weights degrade to plain round robin.
        assert_eq!(sequence(&[7, 7, 7], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn large_weights_keep_exact_ratio() {
        let srv = servers(&[100, 300, 600]);
        let mut s = WeightedRoundRobin::new(&srv);
        // One cycle is (100+300+600)/gcd(100) = 10 picks.
        let h = histogram(3, (0..10_000).map(|_| s.pick(&srv).unwrap()));
        assert_eq!(h, [1000, 3000, 6000]);
    }

    #[test]
    fn unavailable_servers_are_excluded_from_weights() {
        let mut srv = servers(&[1, 2, 8]);
        srv[2].healthy = false;
        let mut s = WeightedRoundRobin::new(&srv);
        let h = histogram(3, (0..300).map(|_| s.pick(&srv).unwrap()));
        assert_eq!(h, [100, 200, 0]);
        // Back up: ratio 1:2:8 after rebuild.
        srv[2].healthy = true;
        s.rebuild(&srv);
        let h = histogram(3, (0..1100).map(|_| s.pick(&srv).unwrap()));
        assert_eq!(h, [100, 200, 800]);
    }

    #[test]
    fn stale_weights_without_rebuild_still_terminate() {
        // Built with gcd 4; then the weights change to values the stale gcd/max would never select.
        let srv = servers(&[4, 8]);
        let mut s = WeightedRoundRobin::new(&srv);
        assert_eq!(s.pick(&srv), Some(1));
        let mut changed = srv.clone();
        changed[1].healthy = false;
        changed[0].weight = 2;
        for _ in 0..10 {
            assert_eq!(s.pick(&changed), Some(0));
        }
    }
}
