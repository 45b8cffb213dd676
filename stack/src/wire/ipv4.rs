//! A zero-copy view of an IPv4 header.
//!
//! ```text
//!  0       4       8               16      19              31
//! +-------+-------+---------------+-------------------------------+
//! |version|  IHL  |      TOS      |          total length         |  0
//! +-------+-------+---------------+-----+-------------------------+
//! |        identification         |flags|     fragment offset     |  4
//! +---------------+---------------+-----+-------------------------+
//! |      TTL      |   protocol    |        header checksum        |  8
//! +---------------+---------------+-------------------------------+
//! |                        source address                         | 12
//! +---------------------------------------------------------------+
//! |                      destination address                      | 16
//! +---------------------------------------------------------------+
//! ```

use std::net::Ipv4Addr;
use std::ops::Range;

use super::checksum;
use super::protocol::{be16, Protocol, WireError};
use super::IPV4_HEADER_LEN;

/// Byte offsets of the IPv4 header fields.
pub mod field {
    use std::ops::Range;
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    /// Total length of the packet.
    pub const TOTAL_LEN: Range<usize> = 2..4;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Transport protocol number.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Range<usize> = 10..12;
    /// Source address.
    pub const SRC: Range<usize> = 12..16;
    /// Destination address.
    pub const DST: Range<usize> = 16..20;
}

/// More-fragments flag and fragment offset bits of [`field::FLAGS_FRAG`]: non-zero for a fragment.
const FRAGMENT_BITS: u16 = 0x3fff;
/// Fragment offset bits of [`field::FLAGS_FRAG`]: non-zero for any fragment but the first.
const OFFSET_BITS: u16 = 0x1fff;

/// An IPv4 header (and what follows it) in `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Header<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Header<T> {
    /// A view without any check: accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Header { buffer }
    }

    /// A view of a header whose version is 4 and whose header length (options included) fits `buffer`; the total
    /// length is not checked (a quoted header in an ICMP error is cut short).
    #[inline]
    pub fn header_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < IPV4_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let h = Ipv4Header { buffer };
        if h.version() != 4 || h.header_len() < IPV4_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if h.header_len() > h.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(h)
    }

    /// A view of a whole packet: [`Ipv4Header::header_checked`], and a total length that covers the header and
    /// fits `buffer` (which may hold padding after it).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let h = Self::header_checked(buffer)?;
        let total = h.total_len();
        if total < h.header_len() || total > h.buffer.as_ref().len() {
            return Err(WireError::Malformed);
        }
        Ok(h)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Total length of the packet (header and payload), as the header says.
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::TOTAL_LEN.start))
    }

    /// Whether the packet is a fragment (more fragments follow, or its offset is not zero).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG.start) & FRAGMENT_BITS != 0
    }

    /// Whether the packet is a fragment other than the first (the only one that carries the transport header).
    #[inline]
    pub fn is_later_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG.start) & OFFSET_BITS != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Transport protocol.
    #[inline]
    pub fn protocol(&self) -> Protocol {
        Protocol::from_number(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), field::SRC)
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), field::DST)
    }

    /// Whether the header checksum verifies.
    #[inline]
    pub fn checksum_ok(&self) -> bool {
        checksum::checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The payload, from the end of the header to the total length (trimmed of padding).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }

    /// What follows the header in the buffer (for a cut-short quote: as much of the payload as was kept).
    #[inline]
    pub fn rest(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Header<T> {
    /// Sets the source and destination addresses, updating the header checksum incrementally.
    #[inline]
    pub fn set_addresses(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let (os, od) = (self.src().octets(), self.dst().octets());
        let (ns, nd) = (src.octets(), dst.octets());
        let b = self.buffer.as_mut();
        let old = be16(b, field::CHECKSUM.start);
        let c = checksum::update32(checksum::update32(old, os, ns), od, nd);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        b[field::SRC].copy_from_slice(&ns);
        b[field::DST].copy_from_slice(&nd);
    }

    /// Sets the TTL, updating the header checksum incrementally.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.buffer.as_mut();
        let old_word = be16(b, field::TTL);
        b[field::TTL] = ttl;
        let new_word = be16(b, field::TTL);
        let c = checksum::update16(be16(b, field::CHECKSUM.start), old_word, new_word);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

#[inline(always)]
fn addr(b: &[u8], r: Range<usize>) -> Ipv4Addr {
    Ipv4Addr::new(b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3])
}
