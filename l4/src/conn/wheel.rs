//! A hashed timer wheel with lazy re-arming, for connection expiry without scans.
//!
//! Each entry sits in the slot of the deadline it had when it was (re)inserted. Extending a deadline on every
//! packet only writes the entry's `expires` field (O(1), no list surgery); when the old slot comes due, the
//! entry is found not yet expired and re-inserted at its new deadline. Deadlines beyond the wheel's span are
//! parked at the farthest slot and re-inserted as often as needed.
//!
//! The wheel stores no entries itself: the links (`next`) live in the caller's slab, accessed through
//! closures, so it allocates nothing after construction.

/// Sentinel for "no entry".
pub const NIL: u32 = u32::MAX;

/// The wheel: one list head per slot.
#[derive(Debug)]
pub struct TimerWheel {
    heads: Vec<u32>,
    mask: u64,
    /// The tick whose slot is processed next.
    current: u64,
}

/// What the owner of an entry says when its slot comes due.
pub enum Due {
    /// The entry has expired: it is removed (the callback already released it).
    Expired,
    /// The entry now expires at this tick: re-insert it.
    Later(u64),
}

impl TimerWheel {
    /// A wheel of `slots` slots (rounded up to a power of two), starting at tick `now`.
    pub fn new(slots: usize, now: u64) -> Self {
        let n = slots.next_power_of_two().max(2);
        TimerWheel {
            heads: vec![NIL; n],
            mask: (n - 1) as u64,
            current: now,
        }
    }

    /// The span of the wheel in ticks.
    pub fn span(&self) -> u64 {
        self.mask + 1
    }

    /// The next tick to be processed.
    pub fn current(&self) -> u64 {
        self.current
    }

    fn slot_for(&self, expires: u64) -> usize {
        let farthest = self.current + self.mask;
        (expires.clamp(self.current, farthest) & self.mask) as usize
    }

    /// Inserts entry `id` expiring at `expires`; `set_next(id, next)` links it into the slot's list.
    pub fn insert(&mut self, id: u32, expires: u64, mut set_next: impl FnMut(u32, u32)) {
        let slot = self.slot_for(expires);
        set_next(id, self.heads[slot]);
        self.heads[slot] = id;
    }

    /// Processes due slots up to and including tick `now`, visiting at most `budget` entries. For each entry
    /// of a due slot, `visit(id, tick)` decides whether it expired or when it is due now; `next(id)` reads an
    /// entry's link and `set_next` writes it. Returns the number of entries visited; when the budget runs out
    /// the rest of the slot stays for the next call.
    pub fn advance(
        &mut self,
        now: u64,
        budget: usize,
        mut next: impl FnMut(u32) -> u32,
        mut set_next: impl FnMut(u32, u32),
        mut visit: impl FnMut(u32, u64) -> Due,
    ) -> usize {
        let mut visited = 0;
        while self.current <= now {
            let slot = (self.current & self.mask) as usize;
            let mut id = std::mem::replace(&mut self.heads[slot], NIL);
            while id != NIL {
                if visited == budget {
                    // Put the unvisited rest back; this slot is processed again next time.
                    self.heads[slot] = id;
                    return visited;
                }
                let following = next(id);
                visited += 1;
                match visit(id, self.current) {
                    Due::Expired => {}
                    Due::Later(expires) => {
                        // Never re-insert into the slot being drained at this tick, or the loop would not end.
                        let expires = expires.max(self.current + 1);
                        let s = self.slot_for(expires);
                        set_next(id, self.heads[s]);
                        self.heads[s] = id;
                    }
                }
                id = following;
            }
            self.current += 1;
        }
        visited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny slab for tests: per entry, its deadline, link and whether it is alive.
    struct Slab {
        expires: Vec<u64>,
        next: Vec<u32>,
        alive: Vec<bool>,
    }

    fn run(wheel: &mut TimerWheel, slab: &mut Slab, now: u64, budget: usize) -> Vec<u32> {
        let mut expired = vec![];
        let Slab { expires, next, alive } = slab;
        let next_cell = std::cell::RefCell::new(next);
        wheel.advance(
            now,
            budget,
            |id| next_cell.borrow()[id as usize],
            |id, n| next_cell.borrow_mut()[id as usize] = n,
            |id, tick| {
                if expires[id as usize] <= tick {
                    alive[id as usize] = false;
                    expired.push(id);
                    Due::Expired
                } else {
                    Due::Later(expires[id as usize])
                }
            },
        );
        expired
    }

    fn slab(deadlines: &[u64]) -> Slab {
        Slab {
            expires: deadlines.to_vec(),
            next: vec![NIL; deadlines.len()],
            alive: vec![true; deadlines.len()],
        }
    }

    #[test]
    fn entries_expire_at_their_deadline_not_before() {
        let deadlines = [5, 3, 9, 3];
        let mut s = slab(&deadlines);
        let mut w = TimerWheel::new(8, 0);
        for (i, d) in deadlines.iter().enumerate() {
            let next = &mut s.next;
            w.insert(i as u32, *d, |id, n| next[id as usize] = n);
        }
        assert!(run(&mut w, &mut s, 2, usize::MAX).is_empty());
        let mut at3 = run(&mut w, &mut s, 3, usize::MAX);
        at3.sort();
        assert_eq!(at3, vec![1, 3]);
        assert_eq!(run(&mut w, &mut s, 5, usize::MAX), vec![0]);
        assert_eq!(run(&mut w, &mut s, 9, usize::MAX), vec![2]);
    }

    #[test]
    fn extended_deadlines_and_deadlines_beyond_the_span_are_rearmed() {
        let mut s = slab(&[4, 100]);
        let mut w = TimerWheel::new(8, 0);
        for id in 0..2u32 {
            let d = s.expires[id as usize];
            let next = &mut s.next;
            w.insert(id, d, |i, n| next[i as usize] = n);
        }
        // Entry 0 is touched: its deadline moves to 20 without touching the wheel.
        s.expires[0] = 20;
        for t in 0..20 {
            assert!(run(&mut w, &mut s, t, usize::MAX).is_empty(), "nothing due at {t}");
        }
        assert_eq!(run(&mut w, &mut s, 20, usize::MAX), vec![0]);
        assert!(run(&mut w, &mut s, 99, usize::MAX).is_empty());
        assert_eq!(run(&mut w, &mut s, 100, usize::MAX), vec![1]);
    }

    #[test]
    fn budget_limits_work_per_call_and_the_rest_follows() {
        let n = 10;
        let mut s = slab(&vec![1; n]);
        let mut w = TimerWheel::new(8, 0);
        for id in 0..n as u32 {
            let next = &mut s.next;
            w.insert(id, 1, |i, x| next[i as usize] = x);
        }
        let first = run(&mut w, &mut s, 1, 4);
        assert_eq!(first.len(), 4);
        let rest = run(&mut w, &mut s, 1, usize::MAX);
        assert_eq!(rest.len(), 6);
        assert!(s.alive.iter().all(|a| !a));
    }
}
