//! A zero-copy view of a UDP header.
//!
//! ```text
//!  0                               16                              31
//! +-------------------------------+-------------------------------+
//! |          source port          |       destination port        |  0
//! +-------------------------------+-------------------------------+
//! |            length             |           checksum            |  4
//! +-------------------------------+-------------------------------+
//! ```

use super::protocol::{be16, WireError};
use super::UDP_HEADER_LEN;

/// Byte offsets of the UDP header fields.
pub mod field {
    use std::ops::Range;
    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Length of header and payload.
    pub const LENGTH: Range<usize> = 4..6;
    /// Checksum (zero: none was computed).
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A UDP datagram in `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct UdpHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpHeader<T> {
    /// A view without any check: accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpHeader { buffer }
    }

    /// A view of a datagram whose header fits `buffer` and whose length field covers the header and fits
    /// `buffer`.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < UDP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let u = UdpHeader { buffer };
        if u.len() < UDP_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if u.len() > u.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(u)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Length of header and payload, as the header says.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH.start))
    }

    /// Checksum field (zero: the sender computed none).
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Header and payload, trimmed to the length field.
    #[inline]
    pub fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.len()]
    }

    /// The payload, trimmed to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[UDP_HEADER_LEN..self.len()]
    }
}
