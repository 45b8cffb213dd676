//! ICMP errors about forwarded flows, passed on to the other end of the connection (as IPVS does).
//!
//! A router on a client's path reports a packet the appliance sent as VIP → client (typically "fragmentation
//! needed", the signal path-MTU discovery lives on), or a router on a backend's path reports a FULLNAT packet
//! LIP → backend. Dropped, such errors leave both ends retransmitting oversized segments into a black hole; so
//! the error goes to the end that sent the original packet, rewritten as if it were about the packet that end
//! sent (for FULLNAT: the other addresses and ports in both the outer and the quoted header).

use std::net::{Ipv4Addr, SocketAddrV4};

use xlb_stack::wire::checksum::checksum;
use xlb_stack::wire::icmp::{field, ICMP_HEADER_LEN};
use xlb_stack::wire::{IcmpMessage, Ipv4Header, Protocol, ETH_HEADER_LEN};

use super::nat;
use crate::conn::Proto;

/// The TCP or UDP packet an ICMP error is about, as quoted in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Its transport protocol.
    pub proto: Proto,
    /// Its source.
    pub src: SocketAddrV4,
    /// Its destination.
    pub dst: SocketAddrV4,
}

/// The packet quoted by the ICMP message at `l4` in `frame`, if the message is an error that quotes at least
/// the ports of a TCP or UDP packet.
pub fn quoted(frame: &[u8], l4: usize) -> Option<Quoted> {
    let message = IcmpMessage::new_checked(frame.get(l4..ip_end(frame)?)?).ok()?;
    let quote = message.quote().ok()?;
    let inner = quote.ip();
    // Only a first fragment carries the ports.
    if inner.is_later_fragment() {
        return None;
    }
    let proto = match inner.protocol() {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        _ => return None,
    };
    let (src_port, dst_port) = quote.ports();
    Some(Quoted {
        proto,
        src: SocketAddrV4::new(inner.src(), src_port),
        dst: SocketAddrV4::new(inner.dst(), dst_port),
    })
}

/// Rewrites the ICMP error at `l4` in `frame` (which [`quoted`] accepted as about `q`): the outer packet goes
/// `outer_src` → `outer_dst`, the quoted one reads `inner_src` → `inner_dst`. The outer and quoted IPv4 header
/// checksums and the quoted transport checksum (when the quote holds it) are updated incrementally; the ICMP
/// checksum is recomputed over the message.
pub fn rewrite(
    frame: &mut [u8],
    l4: usize,
    q: &Quoted,
    (outer_src, outer_dst): (Ipv4Addr, Ipv4Addr),
    (inner_src, inner_dst): (SocketAddrV4, SocketAddrV4),
) {
    let end = ip_end(frame).expect("the caller checked the frame with quoted()");
    nat::set_addresses(&mut frame[ETH_HEADER_LEN..], outer_src, outer_dst);

    let icmp = &mut frame[l4..end];
    let inner = &mut icmp[ICMP_HEADER_LEN..];
    let header_len = Ipv4Header::new_unchecked(&*inner).header_len();
    debug_assert_eq!(nat::packet_endpoints(inner, header_len), (q.src, q.dst));
    nat::rewrite_packet(inner, header_len, q.proto, inner_src, inner_dst);
    icmp[field::CHECKSUM].copy_from_slice(&[0, 0]);
    let c = checksum(icmp);
    icmp[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

/// End of the IPv4 packet in `frame` (Ethernet padding excluded), if its total length fits the frame.
fn ip_end(frame: &[u8]) -> Option<usize> {
    let ip = Ipv4Header::new_checked(frame.get(ETH_HEADER_LEN..)?).ok()?;
    Some(ETH_HEADER_LEN + ip.total_len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::packet;
    use xlb_stack::wire::build::{icmp_unreachable, Unreachable};
    use xlb_stack::wire::{EthernetAddress, Icmpv4Packet, Ipv4Packet};

    fn sa(a: [u8; 4], p: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), p)
    }

    /// An ICMP error from `router` to `to` quoting `original` (a frame) cut to `quote_len` bytes of IP packet.
    fn error_about(original: &[u8], quote_len: usize, router: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
        let quote = &original[ETH_HEADER_LEN..(ETH_HEADER_LEN + quote_len).min(original.len())];
        let mut buf = vec![0u8; 1600];
        let n = icmp_unreachable(
            &mut buf,
            EthernetAddress([2; 6]),
            EthernetAddress([4; 6]),
            router,
            to,
            Unreachable::Port,
            quote,
        );
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_quoted_fullnat_reply_is_rewritten_into_what_the_backend_sent() {
        let (vip, client) = (sa([198, 18, 0, 100], 80), sa([198, 18, 0, 1], 40000));
        let (lip, backend) = (sa([198, 19, 0, 10], 10_000), sa([198, 19, 0, 2], 8080));
        for proto in [Proto::Tcp, Proto::Udp] {
            // 28 bytes: only the ports and (UDP) the checksum are quoted; 60: the whole TCP header too.
            for quote_len in [28, 60, 200] {
                let mut original = packet(
                    proto,
                    EthernetAddress([2; 6]),
                    EthernetAddress([4; 6]),
                    backend,
                    lip,
                    0x10,
                    &[7; 300],
                );
                nat::rewrite(&mut original, ETH_HEADER_LEN + 20, proto, vip, client);
                let router = Ipv4Addr::new(198, 18, 0, 254);
                let mut f = error_about(&original, quote_len, router, *vip.ip());
                let l4 = ETH_HEADER_LEN + 20;
                let q = quoted(&f, l4).expect("an error quoting a TCP/UDP packet");
                assert_eq!(
                    q,
                    Quoted {
                        proto,
                        src: vip,
                        dst: client
                    }
                );

                rewrite(&mut f, l4, &q, (*lip.ip(), *backend.ip()), (backend, lip));
                let ip = Ipv4Packet::new_checked(&f[ETH_HEADER_LEN..]).unwrap();
                assert!(ip.verify_checksum(), "outer IPv4 checksum");
                assert_eq!((ip.src_addr(), ip.dst_addr()), (*lip.ip(), *backend.ip()));
                let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
                assert!(icmp.verify_checksum(), "ICMP checksum");
                let inner = Ipv4Packet::new_unchecked(&ip.payload()[8..]);
                assert!(inner.verify_checksum(), "quoted IPv4 checksum");
                assert_eq!((inner.src_addr(), inner.dst_addr()), (*backend.ip(), *lip.ip()));
                assert_eq!(nat::packet_endpoints(&ip.payload()[8..], 20), (backend, lip));
                // Where the quote holds the transport checksum, it is the one the backend's packet has.
                let at = if proto == Proto::Tcp { 16 } else { 6 };
                if quote_len >= 20 + at + 2 {
                    let mut sent = original.clone();
                    nat::rewrite(&mut sent, l4, proto, backend, lip);
                    let quoted_l4 = &ip.payload()[8 + 20..];
                    assert_eq!(
                        quoted_l4[at..at + 2],
                        sent[l4 + at..l4 + at + 2],
                        "{proto:?} {quote_len}"
                    );
                }
            }
        }
    }

    #[test]
    fn non_errors_fragments_and_short_quotes_are_not_about_a_flow() {
        let (a, b) = (sa([198, 18, 0, 100], 80), sa([198, 18, 0, 1], 40000));
        let original = packet(
            Proto::Udp,
            EthernetAddress([2; 6]),
            EthernetAddress([4; 6]),
            a,
            b,
            0,
            b"x",
        );
        let router = Ipv4Addr::new(198, 18, 0, 254);
        let l4 = ETH_HEADER_LEN + 20;
        assert!(quoted(&error_about(&original, 28, router, *a.ip()), l4).is_some());
        // Echo request, not an error.
        let mut echo = error_about(&original, 28, router, *a.ip());
        echo[l4] = 8;
        assert!(quoted(&echo, l4).is_none());
        // Quote too short for the ports.
        assert!(quoted(&error_about(&original, 22, router, *a.ip()), l4).is_none());
        // A later fragment.
        let mut frag = original.clone();
        frag[ETH_HEADER_LEN + 7] = 1;
        assert!(quoted(&error_about(&frag, 28, router, *a.ip()), l4).is_none());
        // An IPv4 total length beyond the frame.
        let mut long = error_about(&original, 28, router, *a.ip());
        long[ETH_HEADER_LEN + 2] = 0x40;
        assert!(quoted(&long, l4).is_none());
        // Every truncation is refused or parsed, never a panic.
        let full = error_about(&original, 28, router, *a.ip());
        for n in 0..full.len() {
            let _ = quoted(&full[..n], l4);
        }
    }
}
