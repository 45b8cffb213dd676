//! A zero-copy view of an ICMP message, and of the packet an ICMP error quotes.
//!
//! ```text
//!  0               8               16                              31
//! +---------------+---------------+-------------------------------+
//! |     type      |     code      |           checksum            |  0
//! +---------------+---------------+-------------------------------+
//! |      rest of header (echo: id, sequence; errors: unused/MTU)  |  4
//! +---------------------------------------------------------------+
//! |  errors: the offending IPv4 header and the start of its payload (RFC 792: at least 8 bytes)
//! ```

use super::checksum;
use super::ipv4::Ipv4Header;
use super::protocol::{be16, be32, WireError};

/// ICMP message types xlb reads or writes.
pub mod kind {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (an error).
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded (an error).
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem (an error).
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Destination unreachable, code "fragmentation needed" (a path MTU signal).
pub const CODE_FRAG_NEEDED: u8 = 4;

/// Length of the ICMP header (type, code, checksum and 4 bytes of type-specific data).
pub const ICMP_HEADER_LEN: usize = 8;

/// Byte offsets of the ICMP header fields.
pub mod field {
    use std::ops::Range;
    /// Message type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum over the whole message.
    pub const CHECKSUM: Range<usize> = 2..4;
}

/// An ICMP message in `buffer` (the IPv4 payload).
#[derive(Debug, Clone, Copy)]
pub struct IcmpMessage<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpMessage<T> {
    /// A view of a message whose 8-byte header fits `buffer`.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < ICMP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(IcmpMessage { buffer })
    }

    /// Message type (see [`kind`]).
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Whether the checksum verifies over the whole message.
    #[inline]
    pub fn checksum_ok(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }

    /// Whether the message is an error that quotes a packet (destination unreachable, time exceeded, parameter
    /// problem).
    #[inline]
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            kind::DEST_UNREACHABLE | kind::TIME_EXCEEDED | kind::PARAMETER_PROBLEM
        )
    }

    /// The packet an error quotes: an IPv4 header and at least the 4 bytes of its transport ports. `Err` for a
    /// message that is not an error, or whose quote is shorter.
    #[inline]
    pub fn quote(&self) -> Result<Quote<&[u8]>, WireError> {
        if !self.is_error() {
            return Err(WireError::Malformed);
        }
        Quote::new_checked(&self.buffer.as_ref()[ICMP_HEADER_LEN..])
    }
}

/// The packet quoted in an ICMP error: its IPv4 header and the start of its payload (the transport header, cut
/// short).
#[derive(Debug, Clone, Copy)]
pub struct Quote<T> {
    ip: Ipv4Header<T>,
}

/// Bytes of the quoted transport header that hold the ports.
const PORTS_LEN: usize = 4;
/// Bytes of the quoted transport header up to the end of the TCP sequence number (RFC 792's 8 bytes).
const SEQ_END: usize = 8;

impl<T: AsRef<[u8]>> Quote<T> {
    /// A view of a quoted packet: an IPv4 header (its total length is not checked: the quote is cut short)
    /// followed by at least 4 bytes (the ports).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let ip = Ipv4Header::header_checked(buffer)?;
        if ip.rest().len() < PORTS_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Quote { ip })
    }

    /// The quoted IPv4 header.
    #[inline]
    pub fn ip(&self) -> &Ipv4Header<T> {
        &self.ip
    }

    /// The quoted transport bytes (as much as the quote holds, at least the ports).
    #[inline]
    pub fn transport(&self) -> &[u8] {
        self.ip.rest()
    }

    /// The quoted source and destination ports (TCP and UDP).
    #[inline]
    pub fn ports(&self) -> (u16, u16) {
        let t = self.transport();
        (be16(t, 0), be16(t, 2))
    }

    /// The quoted TCP sequence number, if the quote holds it.
    #[inline]
    pub fn tcp_seq(&self) -> Option<u32> {
        let t = self.transport();
        (t.len() >= SEQ_END).then(|| be32(t, 4))
    }
}
