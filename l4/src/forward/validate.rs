//! What a packet must be to open a flow, as Linux conntrack requires of a new connection: a packet that fails is
//! a counted drop and gets no entry, no server and no local port. Packets of existing flows are not checked
//! again here (their entries were opened by valid packets; the servers and clients check their own checksums).

use std::net::Ipv4Addr;

use xlb_stack::drops::DropReason;
use xlb_stack::wire::{checksum, TcpHeader, UdpHeader};

use crate::conn::{FlowKey, Proto};
use crate::drops::L4Drops;

/// Why the first packet of a flow (TCP SYN, or a UDP datagram without an entry) may not open one, if it may not.
/// `segment` is the transport header and payload; `owned` says whether an address is the appliance's.
pub fn invalid_new_flow(segment: &[u8], key: &FlowKey, owned: impl Fn(Ipv4Addr) -> bool) -> Option<DropReason> {
    let (src, dst) = (*key.src.ip(), *key.dst.ip());
    let protocol = key.proto as u8;
    let (stored, flags) = match key.proto {
        Proto::Tcp => match TcpHeader::new_checked(segment) {
            Ok(t) => (t.checksum(), Some(t.flags())),
            Err(_) => return Some(DropReason::MalformedTcp),
        },
        Proto::Udp => match UdpHeader::new_checked(segment) {
            Ok(u) => (u.checksum(), None),
            Err(_) => return Some(DropReason::MalformedUdp),
        },
    };
    let sum = checksum::pseudo_header_sum(src.octets(), dst.octets(), protocol, segment.len() as u16);
    let unchecked_udp = key.proto == Proto::Udp && stored == 0;
    if !unchecked_udp && checksum::fold(sum + checksum::sum(segment)) != 0xffff {
        return Some(DropReason::BadL4Checksum);
    }
    if flags.is_some_and(|f| f.syn() && (f.fin() || f.rst())) {
        return Some(DropReason::InvalidTcpFlags);
    }
    let o = src.octets();
    let bogon = o[0] == 0 || src.is_loopback() || src.is_multicast() || o[0] >= 240 || owned(src);
    bogon.then_some(DropReason::InvalidSource)
}
