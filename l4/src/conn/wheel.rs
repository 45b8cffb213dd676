//! A hashed timer wheel with lazy re-arming, for connection expiry without scans.
//!
//! Each entry sits in the slot of the deadline it had when it was (re)inserted. Extending a deadline on every
//! packet only writes the entry's `expires` field in the caller's slab (O(1), no list surgery); when the old
//! slot comes due, the entry is found not yet expired and re-inserted at its new deadline. Deadlines beyond the
//! wheel's span are parked at the farthest slot and re-inserted as often as needed.
//!
//! The slot lists are doubly linked through arrays sized once for every entry id, so an entry can also be
//! taken out at once ([`TimerWheel::unlink`]) when it is removed or evicted before its time. Nothing is
//! allocated after construction.

/// Sentinel for "no entry".
pub const NIL: u32 = u32::MAX;
/// Marks a `prev` link that names a slot (the entry heads that slot's list) rather than an entry.
const HEAD: u32 = 1 << 31;

/// The wheel: one list head per slot, and the links of every entry id.
#[derive(Debug)]
pub struct TimerWheel {
    heads: Vec<u32>,
    next: Vec<u32>,
    /// The previous entry, `HEAD | slot` for the first entry of a slot, `NIL` when not in the wheel.
    prev: Vec<u32>,
    mask: u64,
    /// The tick whose slot is processed next.
    current: u64,
}

/// What the owner of an entry says when its slot comes due.
pub enum Due {
    /// The entry has expired: it is out of the wheel (the callback already released it).
    Expired,
    /// The entry now expires at this tick: re-insert it.
    Later(u64),
}

impl TimerWheel {
    /// A wheel of `slots` slots (rounded up to a power of two) for entry ids `0..capacity`, starting at tick
    /// `now`.
    pub fn new(slots: usize, capacity: usize, now: u64) -> Self {
        assert!(capacity < HEAD as usize, "timer wheel capacity above 2^31");
        let n = slots.next_power_of_two().max(2);
        TimerWheel {
            heads: vec![NIL; n],
            next: vec![NIL; capacity],
            prev: vec![NIL; capacity],
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

    /// Whether slots up to tick `now` are still to be processed (expiry is behind).
    pub fn is_due(&self, now: u64) -> bool {
        self.current <= now
    }

    /// Bytes reserved (heads and links).
    pub fn memory_bytes(&self) -> usize {
        (self.heads.capacity() + self.next.capacity() + self.prev.capacity()) * std::mem::size_of::<u32>()
    }

    fn slot_for(&self, expires: u64) -> usize {
        let farthest = self.current + self.mask;
        (expires.clamp(self.current, farthest) & self.mask) as usize
    }

    fn push(&mut self, slot: usize, id: u32) {
        let head = self.heads[slot];
        self.next[id as usize] = head;
        self.prev[id as usize] = HEAD | slot as u32;
        if head != NIL {
            self.prev[head as usize] = id;
        }
        self.heads[slot] = id;
    }

    /// Inserts entry `id` (not in the wheel) expiring at `expires`.
    pub fn insert(&mut self, id: u32, expires: u64) {
        debug_assert_eq!(self.prev[id as usize], NIL, "entry {id} already in the wheel");
        self.push(self.slot_for(expires), id);
    }

    /// Whether entry `id` is in the wheel.
    pub fn contains(&self, id: u32) -> bool {
        self.prev[id as usize] != NIL
    }

    /// Takes entry `id` out of the wheel (O(1)); nothing happens if it is not in it.
    pub fn unlink(&mut self, id: u32) {
        let (prev, next) = (self.prev[id as usize], self.next[id as usize]);
        if prev == NIL {
            return;
        }
        if prev & HEAD != 0 {
            self.heads[(prev & !HEAD) as usize] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next != NIL {
            self.prev[next as usize] = prev;
        }
        self.prev[id as usize] = NIL;
        self.next[id as usize] = NIL;
    }

    /// Processes due slots up to and including tick `now`, visiting at most `budget` entries. Each visited
    /// entry is taken out of its slot first; `visit(id, tick)` then says whether it expired or when it is due
    /// now (it is re-inserted there). Returns the number of entries visited; when the budget runs out the rest
    /// of the slot stays for the next call.
    pub fn advance(&mut self, now: u64, budget: usize, mut visit: impl FnMut(u32, u64) -> Due) -> usize {
        let mut visited = 0;
        while self.current <= now {
            let slot = (self.current & self.mask) as usize;
            while self.heads[slot] != NIL {
                if visited == budget {
                    return visited;
                }
                let id = self.heads[slot];
                self.unlink(id);
                visited += 1;
                if let Due::Later(expires) = visit(id, self.current) {
                    // Never re-insert into the slot being drained at this tick, or the loop would not end.
                    let expires = expires.max(self.current + 1);
                    self.push(self.slot_for(expires), id);
                }
            }
            self.current += 1;
        }
        visited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny slab for tests: per entry, its deadline and whether it is alive.
    struct Slab {
        expires: Vec<u64>,
        alive: Vec<bool>,
    }

    fn run(wheel: &mut TimerWheel, slab: &mut Slab, now: u64, budget: usize) -> Vec<u32> {
        let mut expired = vec![];
        wheel.advance(now, budget, |id, tick| {
            if slab.expires[id as usize] <= tick {
                slab.alive[id as usize] = false;
                expired.push(id);
                Due::Expired
            } else {
                Due::Later(slab.expires[id as usize])
            }
        });
        expired
    }

    fn wheel_with(deadlines: &[u64], slots: usize) -> (TimerWheel, Slab) {
        let mut w = TimerWheel::new(slots, deadlines.len(), 0);
        for (i, d) in deadlines.iter().enumerate() {
            w.insert(i as u32, *d);
        }
        let slab = Slab {
            expires: deadlines.to_vec(),
            alive: vec![true; deadlines.len()],
        };
        (w, slab)
    }

    #[test]
    fn entries_expire_at_their_deadline_not_before() {
        let (mut w, mut s) = wheel_with(&[5, 3, 9, 3], 8);
        assert!(run(&mut w, &mut s, 2, usize::MAX).is_empty());
        let mut at3 = run(&mut w, &mut s, 3, usize::MAX);
        at3.sort();
        assert_eq!(at3, vec![1, 3]);
        assert_eq!(run(&mut w, &mut s, 5, usize::MAX), vec![0]);
        assert_eq!(run(&mut w, &mut s, 9, usize::MAX), vec![2]);
        assert!((0..4).all(|id| !w.contains(id)));
    }

    #[test]
    fn extended_deadlines_and_deadlines_beyond_the_span_are_rearmed() {
        let (mut w, mut s) = wheel_with(&[4, 100], 8);
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
        let (mut w, mut s) = wheel_with(&[1; 10], 8);
        let first = run(&mut w, &mut s, 1, 4);
        assert_eq!(first.len(), 4);
        assert!(w.is_due(1), "the rest of slot 1 is still due");
        let rest = run(&mut w, &mut s, 1, usize::MAX);
        assert_eq!(rest.len(), 6);
        assert!(s.alive.iter().all(|a| !a));
        assert!(!w.is_due(1));
    }

    #[test]
    fn unlinked_entries_are_never_visited_wherever_they_sat_in_a_slot() {
        // Entries 0..5 share slot 3; take out the head, a middle one and the tail.
        let (mut w, mut s) = wheel_with(&[3, 3, 3, 3, 3], 8);
        for id in [4, 2, 0] {
            w.unlink(id);
            assert!(!w.contains(id));
        }
        w.unlink(2); // twice: no effect
        let mut left = run(&mut w, &mut s, 3, usize::MAX);
        left.sort();
        assert_eq!(left, vec![1, 3]);
        // An unlinked id can go back in.
        w.insert(2, 5);
        assert!(run(&mut w, &mut s, 4, usize::MAX).is_empty());
        assert_eq!(run(&mut w, &mut s, 5, usize::MAX), vec![2]);
    }
}
