//! Segments in and out of the in-stack TCP host: a received IPv4/TCP packet parsed into smoltcp's
//! representations (checksums verified), and smoltcp's output written as an IPv4/TCP packet.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr};

/// A connection's 4-tuple as seen by xlb: its own (local) end and the peer's (remote) end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// xlb's end (a VIP:port or a local IP:port).
    pub local: SocketAddrV4,
    /// The peer's end (a client or a server).
    pub remote: SocketAddrV4,
}

/// Why a received packet was not a usable TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadSegment {
    /// Truncated or inconsistent headers, or invalid flag combinations.
    Malformed,
    /// The TCP checksum does not verify.
    Checksum,
}

/// Parses the IPv4 packet `ip` (from its IPv4 header to the end of its total length) as a TCP segment.
pub fn parse(ip: &[u8]) -> Result<(Ipv4Repr, TcpRepr<'_>), BadSegment> {
    let caps = ChecksumCapabilities::default();
    let packet = Ipv4Packet::new_checked(ip).map_err(|_| BadSegment::Malformed)?;
    let ipv4 = Ipv4Repr::parse(&packet, &caps).map_err(|_| BadSegment::Malformed)?;
    if ipv4.next_header != IpProtocol::Tcp {
        return Err(BadSegment::Malformed);
    }
    let payload = &ip[usize::from(packet.header_len())..usize::from(packet.total_len())];
    let tcp = TcpPacket::new_checked(payload).map_err(|_| BadSegment::Malformed)?;
    let (src, dst) = (IpAddress::Ipv4(ipv4.src_addr), IpAddress::Ipv4(ipv4.dst_addr));
    if !tcp.verify_checksum(&src, &dst) {
        return Err(BadSegment::Checksum);
    }
    let no_verify = ChecksumCapabilities::ignored();
    let repr = TcpRepr::parse(&tcp, &src, &dst, &no_verify).map_err(|_| BadSegment::Malformed)?;
    Ok((ipv4, repr))
}

/// The tuple of a received segment, from xlb's side.
pub fn tuple_of(ip: &Ipv4Repr, tcp: &TcpRepr<'_>) -> Tuple {
    Tuple {
        local: SocketAddrV4::new(ip.dst_addr, tcp.dst_port),
        remote: SocketAddrV4::new(ip.src_addr, tcp.src_port),
    }
}

/// Writes the segment `tcp` from `ip`'s source to its destination as an IPv4 packet into `out`; returns the
/// packet's length and destination, or `None` if `out` is too small or `ip` is not IPv4.
pub fn emit(out: &mut [u8], ip: &IpRepr, tcp: &TcpRepr<'_>, ttl: u8) -> Option<(usize, Ipv4Addr)> {
    let IpRepr::Ipv4(v4) = ip else { return None };
    let caps = ChecksumCapabilities::default();
    let ipv4 = Ipv4Repr {
        src_addr: v4.src_addr,
        dst_addr: v4.dst_addr,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: ttl,
    };
    let len = ipv4.buffer_len() + tcp.buffer_len();
    if out.len() < len {
        return None;
    }
    let mut packet = Ipv4Packet::new_unchecked(&mut out[..len]);
    ipv4.emit(&mut packet, &caps);
    let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
    tcp.emit(
        &mut segment,
        &IpAddress::Ipv4(v4.src_addr),
        &IpAddress::Ipv4(v4.dst_addr),
        &caps,
    );
    Some((len, v4.dst_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{TcpControl, TcpSeqNumber};

    fn syn() -> (IpRepr, TcpRepr<'static>) {
        let ip = IpRepr::Ipv4(Ipv4Repr {
            src_addr: Ipv4Addr::new(198, 18, 0, 1),
            dst_addr: Ipv4Addr::new(198, 18, 0, 100),
            next_header: IpProtocol::Tcp,
            payload_len: 0,
            hop_limit: 64,
        });
        let tcp = TcpRepr {
            src_port: 40_000,
            dst_port: 80,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 64_000,
            window_scale: Some(7),
            max_seg_size: Some(1460),
            sack_permitted: true,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: b"",
        };
        (ip, tcp)
    }

    #[test]
    fn emitted_segments_parse_back_and_corruption_is_refused() {
        let (ip, tcp) = syn();
        let mut buf = [0u8; 128];
        let (len, dst) = emit(&mut buf, &ip, &tcp, 64).unwrap();
        assert_eq!(dst, Ipv4Addr::new(198, 18, 0, 100));
        let (v4, parsed) = parse(&buf[..len]).unwrap();
        assert_eq!(parsed, tcp);
        let t = tuple_of(&v4, &parsed);
        assert_eq!(t.local, "198.18.0.100:80".parse().unwrap());
        assert_eq!(t.remote, "198.18.0.1:40000".parse().unwrap());
        buf[len - 1] ^= 0x55; // an option byte: the TCP checksum no longer verifies
        assert_eq!(parse(&buf[..len]), Err(BadSegment::Checksum));
        assert_eq!(parse(&buf[..10]), Err(BadSegment::Malformed));
        assert!(emit(&mut buf[..30], &ip, &tcp, 64).is_none(), "too small a buffer");
    }
}
