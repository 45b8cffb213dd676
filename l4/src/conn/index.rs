//! The connection table's hash index: flow hash → slot value, in cache-line buckets, sized once.
//!
//! The index stores no keys. Each bucket is one 64-byte cache line holding [`SLOTS`] pairs of a 16-bit tag
//! (bits of the flow hash) and a 32-bit value (the table stores an entry number and a direction in it). A lookup
//! compares the tags of the key's home bucket and offers every value whose tag matches to the caller, which
//! verifies the key against the entry the value names; so a lookup touches one index line and, on a hit, one
//! entry, and a tag collision costs one more entry comparison, never a wrong answer.
//!
//! Overflow: a key goes to the first bucket with a free slot starting at its home bucket (linear probing of
//! buckets, wrapping at the end). Every bucket counts the keys stored in a later bucket whose probe started at or
//! before it (`passing`); a lookup moves to the next bucket only while that count is non-zero, and a removal
//! decrements the counts it incremented, so deletions need neither tombstones nor moving keys. The table is
//! sized for [`LOAD`] of its slots at the requested number of keys: a Poisson(5) bucket overflows 10 slots with
//! probability ≈1.4%, so almost every lookup is one line (and an overflowing one reads the adjacent line).
//!
//! The bucket and tag come from the flow hash mixed with a per-index random secret, so whoever knows the
//! (fixed, cluster-wide) flow hash cannot tell where a key lands and aim many flows at one run of buckets (the
//! mix is a SplitMix64 finalizer, not a cryptographic function; the secret never leaves the process).
//!
//! All memory is allocated in [`Index::new`] (in huge pages when large); nothing allocates afterwards.

use super::huge::HugeSlice;
use crate::sched::hash::mix64;

/// Slots per bucket.
pub const SLOTS: usize = 10;
/// Target fraction of occupied slots when the index holds the number of keys it was sized for.
pub const LOAD: f64 = 0.5;
/// Tag of a free slot (real tags are never 0).
const FREE: u16 = 0;

/// One cache line: tags, the count of keys probing past it, values.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tags: [u16; SLOTS],
    /// Keys stored in a later bucket whose home bucket is this one or an earlier one on their probe path.
    passing: u32,
    vals: [u32; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

impl Bucket {
    const EMPTY: Bucket = Bucket {
        tags: [FREE; SLOTS],
        passing: 0,
        vals: [0; SLOTS],
    };

    /// Bit i set when slot i holds `tag`.
    #[inline]
    fn matches(&self, tag: u16) -> u32 {
        let mut m = 0;
        for (i, t) in self.tags.iter().enumerate() {
            m |= u32::from(*t == tag) << i;
        }
        m
    }
}

/// Every slot of the index is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFull;

/// A bucketized hash index from 64-bit hashes to `u32` values (see the module documentation).
pub struct Index {
    buckets: HugeSlice<Bucket>,
    secret: u64,
    len: usize,
}

impl Index {
    /// An index with room for `keys` keys at [`LOAD`] (at least one bucket), mixing hashes with `secret`.
    pub fn new(keys: usize, secret: u64) -> Self {
        let n = ((keys as f64 / (SLOTS as f64 * LOAD)).ceil() as usize).max(1);
        Index {
            buckets: HugeSlice::new(Bucket::EMPTY, n),
            secret,
            len: 0,
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots (keys it can hold at most).
    pub fn slots(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    /// Bytes reserved (rounded up to whole huge pages when large).
    pub fn memory_bytes(&self) -> usize {
        self.buckets.reserved_bytes()
    }

    /// Home bucket and tag of `hash`.
    #[inline]
    fn place(&self, hash: u64) -> (usize, u16) {
        let h = mix64(hash ^ self.secret);
        // Multiply-shift maps the high bits onto any bucket count; the tag comes from the low bits.
        let home = ((u128::from(h) * self.buckets.len() as u128) >> 64) as usize;
        let tag = (h as u16).max(1);
        (home, tag)
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// Starts loading the home bucket of `hash` into the cache.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let (home, _) = self.place(hash);
        super::prefetch(&self.buckets[home]);
    }

    /// Calls `f` with every value of the home bucket whose tag matches `hash` (candidates to prefetch; a key
    /// that overflowed its home bucket is not offered).
    #[inline]
    pub fn home_candidates(&self, hash: u64, mut f: impl FnMut(u32)) {
        let (home, tag) = self.place(hash);
        let b = &self.buckets[home];
        let mut m = b.matches(tag);
        while m != 0 {
            f(b.vals[m.trailing_zeros() as usize]);
            m &= m - 1;
        }
    }

    /// The first value stored under `hash` for which `is` holds (`is` checks the key the value stands for).
    #[inline]
    pub fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let (mut b, tag) = self.place(hash);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            let mut m = bucket.matches(tag);
            while m != 0 {
                let v = bucket.vals[m.trailing_zeros() as usize];
                if is(v) {
                    return Some(v);
                }
                m &= m - 1;
            }
            if bucket.passing == 0 {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// Adds `val` under `hash`. The caller makes sure the key is not already present (see [`Index::find`]).
    pub fn insert(&mut self, hash: u64, val: u32) -> Result<(), IndexFull> {
        if self.len == self.slots() {
            return Err(IndexFull);
        }
        let (home, tag) = self.place(hash);
        let mut b = home;
        loop {
            let bucket = &mut self.buckets[b];
            if let Some(i) = bucket.tags.iter().position(|t| *t == FREE) {
                bucket.tags[i] = tag;
                bucket.vals[i] = val;
                break;
            }
            bucket.passing += 1;
            b = self.next(b);
        }
        self.len += 1;
        Ok(())
    }

    /// Removes the slot holding `val` under `hash`; false if there is none.
    pub fn remove(&mut self, hash: u64, val: u32) -> bool {
        let (home, tag) = self.place(hash);
        let mut b = home;
        let mut found = None;
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            if let Some(i) = (0..SLOTS).find(|&i| bucket.tags[i] == tag && bucket.vals[i] == val) {
                found = Some((b, i));
                break;
            }
            if bucket.passing == 0 {
                break;
            }
            b = self.next(b);
        }
        let Some((at, i)) = found else {
            return false;
        };
        self.buckets[at].tags[i] = FREE;
        let mut b = home;
        while b != at {
            self.buckets[b].passing -= 1;
            b = self.next(b);
        }
        self.len -= 1;
        true
    }

    /// Number of buckets that lookups may probe past (tests).
    #[cfg(test)]
    fn passing_buckets(&self) -> usize {
        self.buckets.iter().filter(|b| b.passing > 0).count()
    }

    /// Checks every stored slot against `present` (hash, value) and recomputes every bucket's `passing` count
    /// from where each key lives relative to its home bucket (tests).
    #[cfg(test)]
    fn assert_consistent(&self, present: &[(u64, u32)]) {
        let n = self.buckets.len();
        let mut passing = vec![0u32; n];
        let mut seen = vec![0usize; n];
        for &(hash, val) in present {
            let (home, tag) = self.place(hash);
            let mut b = home;
            let mut hops = 0;
            loop {
                let bucket = &self.buckets[b];
                let hits = (0..SLOTS)
                    .filter(|&i| bucket.tags[i] == tag && bucket.vals[i] == val)
                    .count();
                assert!(hits <= 1, "value {val} stored twice in bucket {b}");
                if hits == 1 {
                    seen[b] += 1;
                    break;
                }
                passing[b] += 1;
                b = self.next(b);
                hops += 1;
                assert!(hops < n, "value {val} not stored");
            }
        }
        for (i, bucket) in self.buckets.iter().enumerate() {
            assert_eq!(bucket.passing, passing[i], "passing count of bucket {i}");
            let used = bucket.tags.iter().filter(|t| **t != FREE).count();
            assert_eq!(used, seen[i], "slots used in bucket {i}");
        }
        assert_eq!(self.len, present.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// xorshift64*: a seeded generator for the randomized tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Keys are u64s; each value is the key's number, and the hash of key k is `hashes[k]`.
    struct Model {
        index: Index,
        hashes: Vec<u64>,
        present: HashMap<u32, u64>,
    }

    impl Model {
        fn new(capacity: usize, keys: usize, secret: u64, hash_of: impl Fn(usize) -> u64) -> Self {
            Model {
                index: Index::new(capacity, secret),
                hashes: (0..keys).map(hash_of).collect(),
                present: HashMap::new(),
            }
        }

        fn find(&self, k: u32) -> Option<u32> {
            self.index.find(self.hashes[k as usize], |v| v == k)
        }

        /// One random operation on a random key: with probability `insert_pct` % an insert (a lookup if present),
        /// otherwise a removal (present or not). True if an insert was refused as full.
        fn step(&mut self, rng: &mut Rng, insert_pct: u64) -> bool {
            let k = rng.below(self.hashes.len() as u64) as u32;
            let h = self.hashes[k as usize];
            let mut refused = false;
            if rng.below(100) < insert_pct {
                if self.present.contains_key(&k) {
                    assert_eq!(self.find(k), Some(k));
                } else {
                    let r = self.index.insert(h, k);
                    if self.present.len() < self.index.slots() {
                        assert_eq!(r, Ok(()));
                        self.present.insert(k, h);
                    } else {
                        assert_eq!(r, Err(IndexFull));
                        refused = true;
                    }
                }
            } else {
                assert_eq!(self.index.remove(h, k), self.present.remove(&k).is_some(), "remove {k}");
            }
            refused
        }

        fn check(&self) {
            assert_eq!(self.index.len(), self.present.len());
            let present: Vec<(u64, u32)> = self.present.iter().map(|(k, h)| (*h, *k)).collect();
            self.index.assert_consistent(&present);
            for k in 0..self.hashes.len() as u32 {
                assert_eq!(self.find(k).is_some(), self.present.contains_key(&k), "key {k}");
            }
        }
    }

    #[test]
    fn bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
        let i = Index::new(1000, 1);
        // Sized at LOAD: 1000 keys in 2000 slots.
        assert_eq!(i.slots(), 2000);
        assert_eq!(i.memory_bytes(), 200 * 64);
        assert_eq!(i.buckets.as_ptr() as usize % 64, 0);
    }

    #[test]
    fn insert_find_remove() {
        let mut i = Index::new(100, 7);
        assert_eq!(i.find(42, |_| true), None);
        i.insert(42, 1).unwrap();
        i.insert(43, 2).unwrap();
        assert_eq!(i.find(42, |v| v == 1), Some(1));
        assert_eq!(i.find(43, |v| v == 2), Some(2));
        assert_eq!(i.find(42, |v| v == 2), None, "verification rejects the other key");
        assert!(!i.remove(42, 2));
        assert!(i.remove(42, 1));
        assert!(!i.remove(42, 1));
        assert_eq!(i.find(42, |_| true), None);
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn equal_hashes_share_a_bucket_and_stay_distinct() {
        // Every key has the same hash: they fill the home bucket, then overflow through the following ones.
        let mut i = Index::new(50, 3);
        for v in 0..40 {
            i.insert(99, v).unwrap();
        }
        for v in 0..40 {
            assert_eq!(i.find(99, |x| x == v), Some(v));
        }
        assert!(i.passing_buckets() >= 3, "overflowed at least three buckets");
        // Removing from the home bucket leaves the overflowed keys reachable, and the freed slot is reused.
        for v in 0..5 {
            assert!(i.remove(99, v));
        }
        for v in 5..40 {
            assert_eq!(i.find(99, |x| x == v), Some(v), "key {v} after removals");
        }
        i.insert(99, 100).unwrap();
        assert_eq!(i.find(99, |x| x == 100), Some(100));
        for v in (5..40).chain([100]) {
            assert!(i.remove(99, v));
        }
        assert!(i.is_empty());
        assert!(i.buckets.iter().all(|b| b.passing == 0), "counts return to zero");
    }

    #[test]
    fn overflow_wraps_around_the_end() {
        let mut i = Index::new(30, 5); // 6 buckets
        let n = i.buckets.len();
        // Find a hash whose home is the last bucket.
        let h = (0..).find(|h| i.place(*h).0 == n - 1).unwrap();
        for v in 0..25 {
            i.insert(h, v).unwrap();
        }
        assert!(i.buckets[0].tags.iter().any(|t| *t != FREE), "wrapped to bucket 0");
        for v in 0..25 {
            assert_eq!(i.find(h, |x| x == v), Some(v));
        }
        for v in 0..25 {
            assert!(i.remove(h, v));
        }
        assert!(i.buckets.iter().all(|b| b.passing == 0));
    }

    #[test]
    fn full_index_refuses_and_accepts_after_a_removal() {
        let mut i = Index::new(20, 11);
        let slots = i.slots();
        for v in 0..slots as u32 {
            i.insert(u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15), v).unwrap();
        }
        assert_eq!(i.insert(12345, 999), Err(IndexFull));
        for v in 0..slots as u32 {
            assert_eq!(
                i.find(u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15), |x| x == v),
                Some(v)
            );
        }
        assert!(i.remove(7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15), 7));
        i.insert(12345, 999).unwrap();
        assert_eq!(i.find(12345, |x| x == 999), Some(999));
        assert_eq!(i.find(7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15), |x| x == 7), None);
    }

    #[test]
    fn random_operations_match_a_hashmap() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x1234_5678_9abc_def1));
            // Distinct random hashes, 200 slots for 300 keys: it runs from empty to full and back.
            let keys = 300;
            let mut m = Model::new(100, keys, seed, |k| mix64(k as u64 ^ 0xdead_beef));
            let mut refused = 0;
            // Filling (inserts win until full), churning, draining.
            for (rounds, insert_pct) in [(2000, 95), (3000, 50), (3000, 5)] {
                for round in 0..rounds {
                    refused += usize::from(m.step(&mut rng, insert_pct));
                    if round % 100 == 0 {
                        m.check();
                    }
                }
                m.check();
            }
            assert!(refused > 0, "seed {seed}: the index was never full");
            assert!(m.present.len() < 50, "seed {seed}: drained");
        }
    }

    #[test]
    fn random_operations_with_colliding_hashes_match_a_hashmap() {
        // Only 8 distinct hashes for 200 keys: long probe runs, shared tags, removals in the middle of runs.
        for seed in 1..=10u64 {
            let mut rng = Rng(seed);
            let mut m = Model::new(150, 200, seed, |k| (k % 8) as u64);
            for _ in 0..5000 {
                m.step(&mut rng, 70);
            }
            m.check();
            // Empty it: every count must return to zero.
            let present: Vec<(u32, u64)> = m.present.iter().map(|(k, h)| (*k, *h)).collect();
            for (k, h) in present {
                assert!(m.index.remove(h, k));
            }
            assert!(m.index.buckets.iter().all(|b| b.passing == 0));
        }
    }

    #[test]
    fn near_full_with_random_hashes() {
        let mut rng = Rng(77);
        let mut i = Index::new(2000, 99);
        let slots = i.slots() as u32;
        let hashes: Vec<u64> = (0..slots).map(|_| rng.next()).collect();
        for (v, h) in hashes.iter().enumerate() {
            i.insert(*h, v as u32).unwrap();
        }
        assert_eq!(i.len(), slots as usize);
        for (v, h) in hashes.iter().enumerate() {
            assert_eq!(i.find(*h, |x| x == v as u32), Some(v as u32));
        }
        // Churn at 100%: remove one, insert one.
        for round in 0..5000u32 {
            let v = rng.below(u64::from(slots)) as u32;
            assert!(i.remove(hashes[v as usize], v), "round {round}");
            i.insert(hashes[v as usize], v).unwrap();
        }
        for (v, h) in hashes.iter().enumerate() {
            assert_eq!(i.find(*h, |x| x == v as u32), Some(v as u32));
        }
    }

    #[test]
    fn home_candidates_offers_tag_matches_only() {
        let mut i = Index::new(100, 1);
        i.insert(5, 50).unwrap();
        i.insert(5, 51).unwrap();
        let mut seen = vec![];
        i.home_candidates(5, |v| seen.push(v));
        seen.sort();
        assert_eq!(seen, vec![50, 51]);
        let other = (6..).find(|h| i.place(*h) != i.place(5)).unwrap();
        let mut none = vec![];
        i.home_candidates(other, |v| none.push(v));
        assert!(none.is_empty());
    }
}
