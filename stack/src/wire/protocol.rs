//! IP protocol numbers as a typed enum, and the error every view's `new_checked` returns.

/// The transport protocol of an IPv4 packet (its header's protocol field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// ICMP (1).
    Icmp,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// Any other protocol number.
    Other(u8),
}

impl Protocol {
    /// IP protocol number of ICMP.
    pub const ICMP: u8 = 1;
    /// IP protocol number of TCP.
    pub const TCP: u8 = 6;
    /// IP protocol number of UDP.
    pub const UDP: u8 = 17;

    /// The protocol of number `n`.
    #[inline]
    pub const fn from_number(n: u8) -> Protocol {
        match n {
            Protocol::ICMP => Protocol::Icmp,
            Protocol::TCP => Protocol::Tcp,
            Protocol::UDP => Protocol::Udp,
            n => Protocol::Other(n),
        }
    }

    /// The protocol number.
    #[inline]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Icmp => Protocol::ICMP,
            Protocol::Tcp => Protocol::TCP,
            Protocol::Udp => Protocol::UDP,
            Protocol::Other(n) => n,
        }
    }
}

impl From<u8> for Protocol {
    fn from(n: u8) -> Protocol {
        Protocol::from_number(n)
    }
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        p.number()
    }
}

/// Why a buffer is not the header a view expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The buffer ends before the header (or the length it declares) does.
    Truncated,
    /// A field has a value the header cannot have (version, header length, length field).
    Malformed,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireError::Truncated => "truncated header",
            WireError::Malformed => "malformed header",
        })
    }
}

impl std::error::Error for WireError {}

/// Reads a big-endian u16 at `at` (the caller checked the length).
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at` (the caller checked the length).
#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
