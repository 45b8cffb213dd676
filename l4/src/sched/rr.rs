//! Round robin (IPVS `rr`).
//!
//! A cursor walks the server list circularly; each pick returns the next available server after the
//! previously picked one, skipping unhealthy and drained (weight 0) servers. Weights are otherwise
//! ignored. The cursor survives rebuilds, so a health flap does not restart the cycle from server 0.

use super::ServerView;

/// Round-robin scheduler state: the index to examine first on the next pick.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// Creates the scheduler; the first pick returns the first available server.
    pub fn new(_servers: &[ServerView]) -> RoundRobin {
        RoundRobin { next: 0 }
    }

    /// Nothing to precompute; keeps the cursor (wrapped to the new list length).
    pub fn rebuild(&mut self, servers: &[ServerView]) {
        if self.next >= servers.len() {
            self.next = 0;
        }
    }

    /// The next available server after the last one picked, or `None`. O(n) worst case, no allocation.
    pub fn pick(&mut self, servers: &[ServerView]) -> Option<usize> {
        let n = servers.len();
        let start = if self.next < n { self.next } else { 0 };
        let i = (start..n).chain(0..start).find(|&i| servers[i].available())?;
        self.next = i + 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testutil::{histogram, servers};

    #[test]
    fn cycles_evenly_in_order_ignoring_weights() {
        let srv = servers(&[1, 5, 2]);
        let mut rr = RoundRobin::new(&srv);
        let picks: Vec<usize> = (0..9).map(|_| rr.pick(&srv).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        let h = histogram(3, (0..3000).map(|_| rr.pick(&srv).unwrap()));
        assert_eq!(h, [1000, 1000, 1000]);
    }

    #[test]
    fn skips_unavailable_servers() {
        let mut srv = servers(&[1, 1, 1, 1]);
        srv[1].healthy = false;
        srv[2].weight = 0;
        let mut rr = RoundRobin::new(&srv);
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(&srv).unwrap()).collect();
        assert_eq!(picks, [0, 3, 0, 3, 0, 3]);
    }

    #[test]
    fn cursor_survives_rebuild_and_shrinking_list() {
        let mut srv = servers(&[1, 1, 1, 1]);
        let mut rr = RoundRobin::new(&srv);
        assert_eq!(rr.pick(&srv), Some(0));
        assert_eq!(rr.pick(&srv), Some(1));
        srv[2].healthy = false;
        rr.rebuild(&srv);
        assert_eq!(rr.pick(&srv), Some(3));
        srv.truncate(2);
        rr.rebuild(&srv);
        assert_eq!(rr.pick(&srv), Some(0));
        assert_eq!(rr.pick(&srv), Some(1));
    }
}
