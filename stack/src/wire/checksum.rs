//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! NAT rewrites a few 16-bit words of a header; recomputing the whole checksum would touch every payload byte.
//! RFC 1624 eqn. 3 updates it from the old and new words alone: `HC' = ~(~HC + ~m + m')`.

/// One's-complement sum of `data` as big-endian 16-bit words (odd trailing byte padded with zero), not folded.
pub fn sum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut acc: u64 = 0;
    for word in &mut chunks {
        acc += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold64(acc)
}

fn fold64(mut acc: u64) -> u32 {
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds a 32-bit one's-complement accumulator to 16 bits.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (the complement of its folded sum).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> u32 {
    sum(&src) + sum(&dst) + u32::from(protocol) + u32::from(l4_len)
}

/// Checksum of a TCP or UDP segment (`segment` with its checksum field zeroed) over the IPv4 pseudo-header.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    !fold(pseudo_header_sum(src, dst, protocol, segment.len() as u16) + sum(segment))
}

/// Updates checksum field `csum` after one 16-bit word changed from `old` to `new` (RFC 1624 eqn. 3).
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// Updates checksum field `csum` after a 32-bit field (an IPv4 address) changed from `old` to `new`.
#[inline]
pub fn update32(csum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let hi = update16(
        csum,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    update16(
        hi,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random byte stream (xorshift) so the tests need no dependency.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn verifying_a_checksummed_buffer_gives_zero() {
        let mut data = bytes(7, 64);
        data[10] = 0;
        data[11] = 0;
        let c = checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&data), 0);
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        for seed in 1..500u64 {
            let mut data = bytes(seed, 40 + (seed as usize % 23));
            data[0] = 0;
            data[1] = 0;
            let before = checksum(&data);
            // Rewrite a 32-bit field and a 16-bit field, as FULLNAT does with an address and a port.
            let at = 2 + 2 * (seed as usize % 8);
            let old32: [u8; 4] = data[at..at + 4].try_into().unwrap();
            let new32: [u8; 4] = bytes(seed * 31, 4).try_into().unwrap();
            data[at..at + 4].copy_from_slice(&new32);
            let mut c = update32(before, old32, new32);
            let p = at + 4;
            let old16 = u16::from_be_bytes([data[p], data[p + 1]]);
            let new16 = (seed as u16).wrapping_mul(2654);
            data[p..p + 2].copy_from_slice(&new16.to_be_bytes());
            c = update16(c, old16, new16);
            let fresh = checksum(&data);
            // One's complement has two zeros (0x0000 and 0xffff); receivers accept either.
            assert!(
                c == fresh || (c == 0xffff && fresh == 0) || (c == 0 && fresh == 0xffff),
                "seed {seed}: {c:#x} != {fresh:#x}"
            );
        }
    }

    #[test]
    fn l4_checksum_verifies_to_zero_with_pseudo_header() {
        let src = [198, 18, 0, 1];
        let dst = [198, 18, 0, 10];
        let mut seg = bytes(99, 33);
        seg[6] = 0;
        seg[7] = 0;
        let c = l4_checksum(src, dst, 17, &seg);
        seg[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(!fold(pseudo_header_sum(src, dst, 17, seg.len() as u16) + sum(&seg)), 0);
    }
}
