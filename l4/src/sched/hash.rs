//! Flow and address hashing for the hashing schedulers (sh, mh) and the Maglev table.
//!
//! The hash is a small word-at-a-time construction: each 64-bit input word is xored into the state,
//! which is then passed through the SplitMix64 finalizer (Stafford's "mix13" variant: two
//! xor-shift/multiply rounds and a final xor-shift). The finalizer is a bijection on `u64` with full
//! avalanche (every input bit flips each output bit with probability ≈ 1/2), so both the low bits
//! (used as `hash & 255` by sh) and the whole word (used as `hash % prime` by Maglev) are well mixed.
//! Each function puts a distinct tag in the unused high bits of its first word, so the hash of an
//! address, of a client `ip:port` and of a 5-tuple never coincide by construction.
//!
//! # Seed
//!
//! All hashes use the fixed [`HASH_SEED`]. That is deliberate: every worker and every node of a cluster
//! must map a flow to the same server, which Maglev's stateless fallback relies on (a node that never saw
//! the flow's SYN still forwards its packets to the right server). The trade-off is that the mapping is
//! predictable: whoever knows the seed and the server list can craft sources that all land on one
//! server. That only moves load around (the tables are fixed-size arrays, there are no chains to
//! degrade), and an attacker able to pick many source addresses can overload a server anyway.
//!
//! This is not a cryptographic hash and not a general-purpose `Hasher`; it hashes fixed-size inputs.

use std::net::{Ipv4Addr, SocketAddrV4};

/// The fixed seed of every hash in this module (the first 64 bits of the fractional part of π).
///
/// Changing it changes every sh and mh mapping, so all nodes of a cluster must run with the same value.
pub const HASH_SEED: u64 = 0x243f_6a88_85a3_08d3;

/// Domain tags, placed in bits 48..64 of the first word (those bits are otherwise zero).
const TAG_ADDR: u64 = 0xa11d << 48;
const TAG_FLOW: u64 = 0xf10e << 48;
const TAG_5TUPLE: u64 = 0x5e77 << 48;
/// Tags for the two Maglev server hashes (offset and skip).
const TAG_SERVER_OFFSET: u64 = 0x0ff5 << 48;
const TAG_SERVER_SKIP: u64 = 0x5c1b << 48;

/// SplitMix64 finalizer (Stafford mix13): a bijective 64-bit mixer with full avalanche.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Absorbs one word into the running state.
#[inline]
fn absorb(state: u64, word: u64) -> u64 {
    mix64(state ^ word)
}

/// `ip:port` packed into the low 48 bits.
#[inline]
fn pack(addr: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port())
}

/// Hash of an IPv4 address alone (what the sh scheduler hashes: the client's source address).
#[inline]
pub fn hash_addr(ip: Ipv4Addr) -> u64 {
    absorb(HASH_SEED, TAG_ADDR | u64::from(u32::from(ip)))
}

/// Hash of a client's source address *and* port (what the mh scheduler hashes).
///
/// Including the port spreads the flows of many users behind one NAT address over all servers, while
/// still being computable from any packet of the flow (needed for Maglev's stateless fallback).
#[inline]
pub fn flow_hash(client: SocketAddrV4) -> u64 {
    absorb(HASH_SEED, TAG_FLOW | pack(client))
}

/// Hash of a full 5-tuple: protocol number, source `ip:port`, destination `ip:port`.
///
/// Direction matters: `hash_5tuple(p, a, b) != hash_5tuple(p, b, a)` in general.
#[inline]
pub fn hash_5tuple(proto: u8, src: SocketAddrV4, dst: SocketAddrV4) -> u64 {
    let ips = (u64::from(u32::from(*src.ip())) << 32) | u64::from(u32::from(*dst.ip()));
    let rest = TAG_5TUPLE | (u64::from(proto) << 32) | (u64::from(src.port()) << 16) | u64::from(dst.port());
    absorb(absorb(HASH_SEED, rest), ips)
}

/// Maglev's two independent hashes of a server's identity (its `ip:port`): `(offset_hash, skip_hash)`.
#[inline]
pub(crate) fn server_hashes(addr: SocketAddrV4) -> (u64, u64) {
    let packed = pack(addr);
    (
        absorb(HASH_SEED, TAG_SERVER_OFFSET | packed),
        absorb(HASH_SEED, TAG_SERVER_SKIP | packed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
    }

    #[test]
    fn hashes_are_deterministic_and_input_sensitive() {
        let c = sa(10, 0, 0, 1, 40000);
        assert_eq!(flow_hash(c), flow_hash(c));
        assert_ne!(flow_hash(c), flow_hash(sa(10, 0, 0, 1, 40001)));
        assert_ne!(flow_hash(c), flow_hash(sa(10, 0, 0, 2, 40000)));
        assert_ne!(hash_addr(*c.ip()), hash_addr(Ipv4Addr::new(10, 0, 0, 2)));
        // Domain separation: the same bits hashed by different functions differ.
        assert_ne!(hash_addr(*c.ip()), flow_hash(sa(10, 0, 0, 1, 0)));
        let (o, s) = server_hashes(c);
        assert_ne!(o, s);
        assert_ne!(o, flow_hash(c));
        let d = sa(192, 0, 2, 1, 80);
        assert_ne!(hash_5tuple(6, c, d), hash_5tuple(17, c, d));
        assert_ne!(hash_5tuple(6, c, d), hash_5tuple(6, d, c));
    }

    #[test]
    fn low_bits_of_sequential_addresses_are_uniform() {
        // Sequential client addresses (the common case: one subnet) must fill 256 buckets evenly.
        let mut buckets = [0u32; 256];
        for i in 0..256 * 64u32 {
            buckets[(hash_addr(Ipv4Addr::from(0x0a00_0000 + i)) & 255) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min >= 32 && *max <= 100, "min {min} max {max}");
    }

    #[test]
    fn single_bit_flips_avalanche() {
        // Flipping any one input bit flips about half of the output bits on average.
        let base = sa(172, 16, 5, 9, 51234);
        let h0 = flow_hash(base);
        let packed = pack(base);
        let mut total = 0u32;
        for bit in 0..48 {
            let p = packed ^ (1 << bit);
            let addr = SocketAddrV4::new(Ipv4Addr::from((p >> 16) as u32), p as u16);
            total += (flow_hash(addr) ^ h0).count_ones();
        }
        let avg = f64::from(total) / 48.0;
        assert!((26.0..=38.0).contains(&avg), "average flipped bits {avg}");
    }
}
