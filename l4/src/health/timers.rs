//! The checker's timers: one per target (its next event, the earlier of its next probe and its probe's
//! deadline) in a binary min-heap indexed by target, so a target's time moves in O(log n) and no stale items pile
//! up. `handle_timeout` pops only what is due; `poll_timeout` reads the top.

use std::time::Instant;

const ABSENT: usize = usize::MAX;

/// A min-heap of (time, target) with at most one item per target.
#[derive(Debug)]
pub(super) struct TimerHeap {
    /// The heap, ordered by (time, target).
    items: Vec<(Instant, usize)>,
    /// Target → its position in `items` (`ABSENT`: no timer).
    pos: Vec<usize>,
}

impl TimerHeap {
    /// A heap for targets `0..n`, none armed.
    pub(super) fn new(n: usize) -> Self {
        TimerHeap {
            items: Vec::with_capacity(n),
            pos: vec![ABSENT; n],
        }
    }

    /// The earliest (time, target).
    pub(super) fn peek(&self) -> Option<(Instant, usize)> {
        self.items.first().copied()
    }

    /// Number of armed targets.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// Arms (or moves) `target`'s timer to `at`.
    pub(super) fn set(&mut self, target: usize, at: Instant) {
        match self.pos[target] {
            ABSENT => {
                self.items.push((at, target));
                let k = self.items.len() - 1;
                self.pos[target] = k;
                self.up(k);
            }
            k => {
                let old = self.items[k].0;
                self.items[k].0 = at;
                if at < old {
                    self.up(k);
                } else {
                    self.down(k);
                }
            }
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.items.swap(a, b);
        self.pos[self.items[a].1] = a;
        self.pos[self.items[b].1] = b;
    }

    fn up(&mut self, mut k: usize) {
        while k > 0 {
            let parent = (k - 1) / 2;
            if self.items[k] >= self.items[parent] {
                break;
            }
            self.swap(k, parent);
            k = parent;
        }
    }

    fn down(&mut self, mut k: usize) {
        let n = self.items.len();
        loop {
            let (l, r) = (2 * k + 1, 2 * k + 2);
            let mut least = k;
            if l < n && self.items[l] < self.items[least] {
                least = l;
            }
            if r < n && self.items[r] < self.items[least] {
                least = r;
            }
            if least == k {
                break;
            }
            self.swap(k, least);
            k = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_time_then_target_order_and_moves_items() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = TimerHeap::new(6);
        for (target, ms) in [(0, 50), (1, 10), (2, 30), (3, 10), (4, 40), (5, 20)] {
            h.set(target, at(ms));
        }
        h.set(4, at(5)); // earlier
        h.set(1, at(60)); // later
        let mut order = vec![];
        while let Some((t, i)) = h.peek() {
            order.push((i, (t - t0).as_millis()));
            h.set(i, at(1000 + i as u64)); // re-armed far away, as the checker does
            if order.len() == 6 {
                break;
            }
        }
        assert_eq!(order, vec![(4, 5), (3, 10), (5, 20), (2, 30), (0, 50), (1, 60)]);
        assert_eq!(h.len(), 6, "one item per target");
        assert_eq!(h.peek(), Some((at(1000), 0)));
    }
}
