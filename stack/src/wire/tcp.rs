//! TCP flags and a zero-copy view of a TCP header.
//!
//! ```text
//!  0                               16                              31
//! +-------------------------------+-------------------------------+
//! |          source port          |       destination port        |  0
//! +-------------------------------+-------------------------------+
//! |                        sequence number                        |  4
//! +---------------------------------------------------------------+
//! |                    acknowledgment number                      |  8
//! +-------+-------+---------------+-------------------------------+
//! | d.off |       |     flags     |            window             | 12
//! +-------+-------+---------------+-------------------------------+
//! |           checksum            |        urgent pointer         | 16
//! +-------------------------------+-------------------------------+
//! ```

use super::protocol::{be16, be32, WireError};
use super::TCP_HEADER_LEN;

/// Byte offsets of the TCP header fields.
pub mod field {
    use std::ops::Range;
    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Sequence number.
    pub const SEQ: Range<usize> = 4..8;
    /// Acknowledgment number.
    pub const ACK: Range<usize> = 8..12;
    /// Data offset (high nibble, in 32-bit words).
    pub const DATA_OFFSET: usize = 12;
    /// Flags.
    pub const FLAGS: usize = 13;
    /// Receive window.
    pub const WINDOW: Range<usize> = 14..16;
    /// Checksum.
    pub const CHECKSUM: Range<usize> = 16..18;
}

/// The flags byte of a TCP header, with named bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No flag.
    pub const NONE: TcpFlags = TcpFlags(0);
    /// FIN: the sender has finished sending.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// SYN: synchronise sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// RST: reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// PSH: push.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// ACK: the acknowledgment number is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// SYN and ACK.
    pub const SYN_ACK: TcpFlags = TcpFlags(0x12);

    /// Whether every flag of `other` is set.
    #[inline]
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// FIN is set.
    #[inline]
    pub const fn fin(self) -> bool {
        self.contains(TcpFlags::FIN)
    }

    /// SYN is set.
    #[inline]
    pub const fn syn(self) -> bool {
        self.contains(TcpFlags::SYN)
    }

    /// RST is set.
    #[inline]
    pub const fn rst(self) -> bool {
        self.contains(TcpFlags::RST)
    }

    /// ACK is set.
    #[inline]
    pub const fn ack(self) -> bool {
        self.contains(TcpFlags::ACK)
    }

    /// The flags byte.
    #[inline]
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// A TCP header (and its payload) in `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct TcpHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpHeader<T> {
    /// A view without any check: accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpHeader { buffer }
    }

    /// A view of a segment whose fixed header fits `buffer` and whose data offset covers the fixed header and
    /// fits `buffer`.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < TCP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let t = TcpHeader { buffer };
        if t.header_len() < TCP_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if t.header_len() > t.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(t)
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

    /// Sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ.start)
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK.start)
    }

    /// Header length in bytes (data offset × 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// Flags.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    /// Receive window.
    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW.start)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The options, between the fixed header and the payload.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[TCP_HEADER_LEN..self.header_len()]
    }

    /// The payload.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}
