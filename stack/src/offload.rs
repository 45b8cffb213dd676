//! Partial L4 checksums from peers with TX checksum offload, and the one-time hint that names the fix.
//!
//! A Linux sender with TX checksum offload leaves the TCP/UDP checksum to the NIC (CHECKSUM_PARTIAL): the
//! checksum field holds the folded pseudo-header sum (addresses, protocol, length), not the complemented sum
//! of the whole segment. On a veth pair, or a virtual NIC whose host skips the completion, the frame reaches
//! the other end like that. The kernel on the receiving side trusts such frames (the skb says so); AF_XDP
//! frames carry no such state, so xlb sees a checksum that does not verify. [`is_partial`] recognises the
//! pattern, and [`warn_once`] logs the cause and the fix once per interface (or other key) per process.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::wire::checksum;

/// Offset of the checksum field in a TCP header.
pub const TCP_CHECKSUM_OFFSET: usize = 16;
/// Offset of the checksum field in a UDP header.
pub const UDP_CHECKSUM_OFFSET: usize = 6;

/// What to do about partial checksums, as the warning says it.
pub const FIX: &str = "turn off TX checksum offload on the sending side: `ethtool -K <peer interface> tx off` \
                       (for a VM, turn off TX checksum offload on its virtual NIC)";

/// Whether `segment` (a TCP or UDP header and payload, `protocol` 6 or 17, sent from `src` to `dst`) carries a
/// partial checksum: its checksum field, at `csum_offset`, equals the folded pseudo-header sum. Only meaningful
/// for a segment whose checksum does not verify.
pub fn is_partial(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8], csum_offset: usize) -> bool {
    let Some(field) = segment.get(csum_offset..csum_offset + 2) else {
        return false;
    };
    let Ok(len) = u16::try_from(segment.len()) else {
        return false;
    };
    let field = u16::from_be_bytes([field[0], field[1]]);
    let pseudo = checksum::fold(checksum::pseudo_header_sum(src.octets(), dst.octets(), protocol, len));
    field == pseudo
}

/// Keys warned about so far in this process.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Logs, the first time for `key` in this process, a warning that `what` from `from` arrived with partial
/// checksums (`where_` says where it was seen: an interface, the health checker), naming the cause and
/// [`FIX`]. Returns whether it logged.
pub fn warn_once(key: &str, where_: &str, from: Ipv4Addr, what: &str) -> bool {
    let first = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.to_owned());
    if first {
        tracing::warn!(
            at = where_,
            from = %from,
            "{what} with a partial L4 checksum (the sender uses TX checksum offload, which AF_XDP frames on veth \
             or virtual NICs do not complete): such frames are dropped and counted as bad_l4_checksum; fix: {FIX}. \
             Logged once for {key}."
        );
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

    /// A UDP datagram with its checksum field set to `csum`.
    fn udp(csum: u16) -> Vec<u8> {
        let mut d = vec![0x30, 0x39, 0x00, 0x35, 0x00, 0x0b, 0, 0, b'a', b'b', b'c'];
        d[6..8].copy_from_slice(&csum.to_be_bytes());
        d
    }

    #[test]
    fn recognises_the_pseudo_header_sum() {
        let zero = udp(0);
        let full = checksum::l4_checksum(SRC.octets(), DST.octets(), 17, &zero);
        let partial = checksum::fold(checksum::pseudo_header_sum(SRC.octets(), DST.octets(), 17, 11));
        assert!(is_partial(SRC, DST, 17, &udp(partial), UDP_CHECKSUM_OFFSET));
        assert!(!is_partial(SRC, DST, 17, &udp(full), UDP_CHECKSUM_OFFSET));
        assert!(!is_partial(SRC, DST, 17, &udp(full ^ 0x0101), UDP_CHECKSUM_OFFSET));
        // The pseudo-header covers the addresses: the same field for other addresses is just wrong.
        assert!(!is_partial(DST, SRC, 6, &udp(partial), UDP_CHECKSUM_OFFSET));
        assert!(!is_partial(SRC, DST, 17, &[0u8; 4], UDP_CHECKSUM_OFFSET));
    }

    #[test]
    fn warns_once_per_key() {
        assert!(warn_once("offload-test-a", "port 0", SRC, "TCP"));
        assert!(!warn_once("offload-test-a", "port 0", SRC, "TCP"));
        assert!(warn_once("offload-test-b", "port 1", SRC, "UDP"));
    }
}
