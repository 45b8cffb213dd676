//! Test helpers: a deterministic PRNG and body patterns.

/// xorshift64*: deterministic, seedable, good enough to pick split points.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `len` bytes that are not periodic at small lengths (catches reordering and drops).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut rng = Rng::new(len as u64);
    (0..len).map(|_| rng.next() as u8).collect()
}
