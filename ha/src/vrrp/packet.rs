//! VRRP version 3 advertisements for IPv4 (RFC 5798 §5): a zero-copy view and the builder.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      IPv4 Address(es)                         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Version 3 has no authentication. Its checksum covers the VRRP message *and* a pseudo-header (§5.2.8): for
//! IPv4 the same one as UDP's (source, destination, zero, protocol 112, VRRP length), unlike version 2.
//! Advertisements go to 224.0.0.18 with TTL 255, so a receiver can tell they were not routed.

use std::net::Ipv4Addr;

use xlb_stack::wire::build::ipv4_header;
use xlb_stack::wire::checksum::{fold, pseudo_header_sum, sum};
use xlb_stack::wire::{EthernetAddress, Ipv4Header, IPV4_HEADER_LEN};

use super::VrrpError;

/// IP protocol number of VRRP.
pub const VRRP_PROTOCOL: u8 = 112;
/// The group every IPv4 advertisement is sent to.
pub const VRRP_MULTICAST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// TTL of every advertisement; anything else was routed (or forged) and is dropped.
pub const VRRP_TTL: u8 = 255;
/// The protocol version this module speaks.
pub const VRRP_VERSION: u8 = 3;
/// The only VRRP message type: ADVERTISEMENT.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Length of the fixed part of a VRRP message, before the addresses.
pub const HEADER_LEN: usize = 8;
/// Largest Max Adver Int (12 bits), in centiseconds.
pub const MAX_ADVER_INT_CS: u16 = 0x0fff;
/// Most addresses one advertisement carries (the count is 8 bits).
pub const MAX_VIPS: usize = 255;
/// Longest IPv4 packet [`build_advert`] writes (255 addresses).
pub const MAX_PACKET_LEN: usize = IPV4_HEADER_LEN + HEADER_LEN + 4 * MAX_VIPS;

/// Length of a VRRP message carrying `vips` IPv4 addresses.
pub const fn advert_len(vips: usize) -> usize {
    HEADER_LEN + 4 * vips
}

/// Length of the IPv4 packet (header and VRRP message) carrying `vips` addresses.
pub const fn packet_len(vips: usize) -> usize {
    IPV4_HEADER_LEN + advert_len(vips)
}

/// The virtual router's MAC address, 00-00-5E-00-01-{VRID} (RFC 5798 §7.3): the Ethernet source of adverts
/// and the address the Master answers ARP with, unless the deployment keeps the interface MAC.
pub const fn virtual_mac(vrid: u8) -> EthernetAddress {
    EthernetAddress([0x00, 0x00, 0x5e, 0x00, 0x01, vrid])
}

mod field {
    pub const VERSION_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    pub const MAX_ADVER_INT: std::ops::Range<usize> = 4..6;
    pub const CHECKSUM: std::ops::Range<usize> = 6..8;
}

/// A zero-copy view of a VRRP message (the payload of its IPv4 packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VrrpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VrrpPacket<T> {
    /// A view without length checks: accessors panic on a short buffer. Use for buffers being written.
    pub fn new_unchecked(buffer: T) -> Self {
        VrrpPacket { buffer }
    }

    /// A view of a received message: fails unless the buffer holds the fixed part and every address the
    /// count announces (trailing bytes are allowed; they are part of the checksummed payload).
    pub fn new_checked(buffer: T) -> Result<Self, VrrpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the complete message.
    pub fn check_len(&self) -> Result<(), VrrpError> {
        let len = self.buffer.as_ref().len();
        let needed = match self.buffer.as_ref().get(field::COUNT) {
            Some(&count) => advert_len(usize::from(count)),
            None => HEADER_LEN,
        };
        if len < needed {
            return Err(VrrpError::Truncated { len, needed });
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole buffer: the message and any trailing bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Protocol version (3).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_TYPE] >> 4
    }

    /// Message type (1, advertisement).
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_TYPE] & 0x0f
    }

    /// Virtual router id.
    pub fn vrid(&self) -> u8 {
        self.buffer.as_ref()[field::VRID]
    }

    /// The sender's priority; 0 means the Master is stopping.
    pub fn priority(&self) -> u8 {
        self.buffer.as_ref()[field::PRIORITY]
    }

    /// Number of addresses that follow the fixed part.
    pub fn addr_count(&self) -> u8 {
        self.buffer.as_ref()[field::COUNT]
    }

    /// The sender's advertisement interval in centiseconds (the low 12 bits; the top 4 are reserved).
    pub fn max_adver_int(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::MAX_ADVER_INT];
        u16::from_be_bytes([b[0], b[1]]) & MAX_ADVER_INT_CS
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Address number `i` (below [`VrrpPacket::addr_count`]).
    pub fn address(&self, i: usize) -> Ipv4Addr {
        let at = HEADER_LEN + 4 * i;
        let b = &self.buffer.as_ref()[at..at + 4];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The addresses, in packet order.
    pub fn addresses(&self) -> impl ExactSizeIterator<Item = Ipv4Addr> + '_ {
        (0..usize::from(self.addr_count())).map(|i| self.address(i))
    }

    /// The checksum this message should carry when sent from `src` to `dst` (the field itself is skipped).
    pub fn compute_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let data = self.buffer.as_ref();
        let pseudo = pseudo_header_sum(src.octets(), dst.octets(), VRRP_PROTOCOL, data.len() as u16);
        !fold(pseudo + sum(&data[..field::CHECKSUM.start]) + sum(&data[field::CHECKSUM.end..]))
    }

    /// Whether the checksum is right for a message from `src` to `dst`.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let data = self.buffer.as_ref();
        let pseudo = pseudo_header_sum(src.octets(), dst.octets(), VRRP_PROTOCOL, data.len() as u16);
        // Summing the field in gives all ones when it is right, whichever of its two zeros the sender wrote.
        fold(pseudo + sum(data)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VrrpPacket<T> {
    /// Sets the version and type nibbles.
    pub fn set_version_kind(&mut self, version: u8, kind: u8) {
        self.buffer.as_mut()[field::VERSION_TYPE] = (version << 4) | (kind & 0x0f);
    }

    /// Sets the virtual router id.
    pub fn set_vrid(&mut self, vrid: u8) {
        self.buffer.as_mut()[field::VRID] = vrid;
    }

    /// Sets the priority.
    pub fn set_priority(&mut self, priority: u8) {
        self.buffer.as_mut()[field::PRIORITY] = priority;
    }

    /// Sets the address count.
    pub fn set_addr_count(&mut self, count: u8) {
        self.buffer.as_mut()[field::COUNT] = count;
    }

    /// Sets the advertisement interval (centiseconds, at most [`MAX_ADVER_INT_CS`]) and clears the reserved bits.
    pub fn set_max_adver_int(&mut self, cs: u16) {
        self.buffer.as_mut()[field::MAX_ADVER_INT].copy_from_slice(&(cs & MAX_ADVER_INT_CS).to_be_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// Sets address number `i`.
    pub fn set_address(&mut self, i: usize, ip: Ipv4Addr) {
        let at = HEADER_LEN + 4 * i;
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&ip.octets());
    }

    /// Computes and writes the checksum for a message from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let c = self.compute_checksum(src, dst);
        self.set_checksum(c);
    }
}

/// The envelope of a received advertisement: the IPv4 packet's source, its TTL and its payload (the VRRP
/// message), or `None` if `packet` does not start with a valid IPv4 header.
pub fn open_envelope(packet: &[u8]) -> Option<(Ipv4Addr, u8, &[u8])> {
    let ip = Ipv4Header::header_checked(packet).ok()?;
    Some((ip.src(), ip.ttl(), &packet[ip.header_len()..]))
}

/// Writes a VRRP v3 advertisement (the IPv4 payload only) into the start of `buf`, checksummed for a packet
/// from `src` to `dst`, and returns its length. For senders whose socket writes the IPv4 header.
///
/// # Panics
///
/// If `buf` is shorter than [`advert_len`]`(vips.len())`, `vips` holds more than [`MAX_VIPS`] addresses or
/// `max_adver_int_cs` exceeds [`MAX_ADVER_INT_CS`].
pub fn emit_advert(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    vrid: u8,
    priority: u8,
    max_adver_int_cs: u16,
    vips: &[Ipv4Addr],
) -> usize {
    assert!(
        vips.len() <= MAX_VIPS,
        "a VRRP advert carries at most {MAX_VIPS} addresses"
    );
    assert!(max_adver_int_cs <= MAX_ADVER_INT_CS, "Max Adver Int is a 12-bit field");
    let len = advert_len(vips.len());
    assert!(
        buf.len() >= len,
        "buffer of {} bytes for a {len}-byte VRRP advert",
        buf.len()
    );
    let mut p = VrrpPacket::new_unchecked(&mut buf[..len]);
    p.set_version_kind(VRRP_VERSION, TYPE_ADVERTISEMENT);
    p.set_vrid(vrid);
    p.set_priority(priority);
    p.set_addr_count(vips.len() as u8);
    p.set_max_adver_int(max_adver_int_cs);
    for (i, vip) in vips.iter().enumerate() {
        p.set_address(i, *vip);
    }
    p.fill_checksum(src, dst);
    len
}

/// Writes a complete advertisement: an IPv4 header (from `src` to 224.0.0.18, protocol 112, TTL 255) and the
/// VRRP v3 message, checksummed over the IPv4 pseudo-header as RFC 5798 §5.2.8 requires. Returns the packet
/// length, [`packet_len`]`(vips.len())`.
///
/// # Panics
///
/// As [`emit_advert`], for a buffer shorter than [`packet_len`]`(vips.len())`.
pub fn build_advert(
    buf: &mut [u8],
    src: Ipv4Addr,
    vrid: u8,
    priority: u8,
    max_adver_int_cs: u16,
    vips: &[Ipv4Addr],
) -> usize {
    let len = packet_len(vips.len());
    assert!(
        buf.len() >= len,
        "buffer of {} bytes for a {len}-byte VRRP packet",
        buf.len()
    );
    let vrrp_len = emit_advert(
        &mut buf[IPV4_HEADER_LEN..],
        src,
        VRRP_MULTICAST,
        vrid,
        priority,
        max_adver_int_cs,
        vips,
    );
    ipv4_header(buf, src, VRRP_MULTICAST, VRRP_PROTOCOL, vrrp_len, VRRP_TTL);
    len
}

#[cfg(test)]
mod tests {
    use xlb_stack::wire::{IpProtocol, Ipv4Packet};

    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 100);

    /// One's-complement sum written out longhand, independent of `xlb_stack::wire::checksum`.
    fn naive_checksum(bytes: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let hi = u32::from(bytes[i]) << 8;
            let lo = bytes.get(i + 1).copied().map_or(0, u32::from);
            acc += hi | lo;
            while acc > 0xffff {
                acc = (acc & 0xffff) + 1;
            }
            i += 2;
        }
        !(acc as u16)
    }

    #[test]
    fn build_then_parse_round_trips() {
        let vips = [VIP, Ipv4Addr::new(198, 18, 9, 101), Ipv4Addr::new(198, 18, 9, 102)];
        let mut buf = [0u8; MAX_PACKET_LEN];
        let n = build_advert(&mut buf, SRC, 51, 150, 20, &vips);
        assert_eq!(n, 20 + 8 + 12);

        // The IPv4 header, read with smoltcp's view.
        let ip = Ipv4Packet::new_checked(&buf[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(usize::from(ip.total_len()), n);
        assert_eq!(ip.next_header(), IpProtocol::Unknown(VRRP_PROTOCOL));
        assert_eq!(ip.hop_limit(), 255);
        assert_eq!((ip.src_addr(), ip.dst_addr()), (SRC, VRRP_MULTICAST));

        let p = VrrpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((p.version(), p.kind()), (3, 1));
        assert_eq!(
            (p.vrid(), p.priority(), p.addr_count(), p.max_adver_int()),
            (51, 150, 3, 20)
        );
        assert_eq!(p.addresses().collect::<Vec<_>>(), vips);
        assert!(p.verify_checksum(SRC, VRRP_MULTICAST));
        assert!(
            !p.verify_checksum(Ipv4Addr::new(198, 18, 0, 2), VRRP_MULTICAST),
            "pseudo-header covers src"
        );
        assert_eq!(p.compute_checksum(SRC, VRRP_MULTICAST), p.checksum());
    }

    #[test]
    fn the_envelope_gives_source_ttl_and_message_and_a_cut_header_gives_nothing() {
        let mut buf = [0u8; MAX_PACKET_LEN];
        let n = build_advert(&mut buf, SRC, 51, 150, 20, &[VIP]);
        let (src, ttl, vrrp) = open_envelope(&buf[..n]).unwrap();
        assert_eq!((src, ttl, vrrp.len()), (SRC, VRRP_TTL, advert_len(1)));
        assert_eq!(VrrpPacket::new_checked(vrrp).unwrap().vrid(), 51);
        for len in 0..IPV4_HEADER_LEN {
            assert!(open_envelope(&buf[..len]).is_none(), "{len}");
        }
        let mut bad = buf;
        bad[0] = 0x65; // IPv6 version nibble
        assert!(open_envelope(&bad[..n]).is_none());
    }

    #[test]
    fn checksum_matches_a_from_scratch_computation_over_the_pseudo_header() {
        let vips = [VIP, Ipv4Addr::new(198, 18, 9, 7)];
        let mut buf = [0u8; 64];
        let n = emit_advert(&mut buf, SRC, VRRP_MULTICAST, 9, 254, 4095, &vips);
        let mut scratch = Vec::new();
        scratch.extend_from_slice(&SRC.octets());
        scratch.extend_from_slice(&VRRP_MULTICAST.octets());
        scratch.extend_from_slice(&[0, VRRP_PROTOCOL, 0, n as u8]);
        scratch.extend_from_slice(&buf[..n]);
        let at = 12 + 6; // the checksum field, after the pseudo-header
        let written = u16::from_be_bytes([scratch[at], scratch[at + 1]]);
        scratch[at] = 0;
        scratch[at + 1] = 0;
        assert_eq!(written, naive_checksum(&scratch));
    }

    /// An advert laid out by hand from RFC 5798 §5.1, checksum worked out on paper.
    #[test]
    fn matches_a_hand_written_advert() {
        // VRID 51, priority 100, one address 198.18.9.100, interval 100 cs, sent by 198.18.0.1.
        //
        // 16-bit words summed for the checksum:
        //   pseudo-header  c612 0001 (src)  e000 0012 (dst)  0070 (0, protocol 112)  000c (length 12)
        //   VRRP message   3133 (v3, type 1, VRID 51)  6401 (priority 100, count 1)  0064 (interval 100)
        //                  c612 0964 (198.18.9.100)
        //   running sum: c613 1a613 1a625 1a695 1a6a1 1d7d4 23bd5 23c39 3024b 30baf
        //   fold: 0baf + 3 = 0bb2; complement: f44d
        let expected: [u8; 12] = [
            0x31, 0x33, 0x64, 0x01, // version 3 | type 1, VRID 51, priority 100, count 1
            0x00, 0x64, 0xf4, 0x4d, // rsvd | Max Adver Int 100, checksum
            198, 18, 9, 100, // the virtual address
        ];
        let mut buf = [0u8; 12];
        assert_eq!(emit_advert(&mut buf, SRC, VRRP_MULTICAST, 51, 100, 100, &[VIP]), 12);
        assert_eq!(buf, expected);
        assert!(VrrpPacket::new_checked(&expected[..])
            .unwrap()
            .verify_checksum(SRC, VRRP_MULTICAST));

        // The same inside its IPv4 packet: 45 00 | len 32 | id 0 | DF | TTL 255, protocol 112 | checksum | ...
        let mut pkt = [0u8; 32];
        assert_eq!(build_advert(&mut pkt, SRC, 51, 100, 100, &[VIP]), 32);
        assert_eq!(
            &pkt[..10],
            &[0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0xff, 0x70]
        );
        assert_eq!(&pkt[12..20], &[198, 18, 0, 1, 224, 0, 0, 18]);
        assert_eq!(&pkt[20..], &expected);
    }

    #[test]
    fn either_zero_of_ones_complement_verifies() {
        // Find an advert whose checksum computes to 0x0000 by sweeping the priority, then write 0xffff instead.
        let mut buf = [0u8; 12];
        for prio in 0..=255u8 {
            emit_advert(&mut buf, SRC, VRRP_MULTICAST, 1, prio, 100, &[VIP]);
            let mut p = VrrpPacket::new_unchecked(&mut buf[..]);
            if p.checksum() == 0 {
                p.set_checksum(0xffff);
                assert!(p.verify_checksum(SRC, VRRP_MULTICAST));
            }
            assert!(p.verify_checksum(SRC, VRRP_MULTICAST));
        }
    }

    #[test]
    fn short_buffers_are_errors() {
        let mut buf = [0u8; 16];
        emit_advert(&mut buf, SRC, VRRP_MULTICAST, 1, 100, 100, &[VIP, VIP]);
        for len in 0..16 {
            let err = VrrpPacket::new_checked(&buf[..len]).unwrap_err();
            let needed = if len < 4 { HEADER_LEN } else { 16 };
            assert_eq!(err, VrrpError::Truncated { len, needed });
        }
        assert!(VrrpPacket::new_checked(&buf[..]).is_ok());
    }

    #[test]
    fn reserved_bits_are_ignored_and_cleared() {
        let mut buf = [0u8; 12];
        emit_advert(&mut buf, SRC, VRRP_MULTICAST, 1, 100, 100, &[VIP]);
        buf[4] |= 0xf0;
        assert_eq!(VrrpPacket::new_unchecked(&buf[..]).max_adver_int(), 100);
        VrrpPacket::new_unchecked(&mut buf[..]).set_max_adver_int(0xffff);
        assert_eq!(&buf[4..6], &[0x0f, 0xff]);
    }

    #[test]
    fn virtual_mac_ends_in_the_vrid() {
        assert_eq!(virtual_mac(51).0, [0x00, 0x00, 0x5e, 0x00, 0x01, 51]);
    }
}
