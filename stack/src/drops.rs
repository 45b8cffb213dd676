//! Drop reasons: every dropped frame is counted under exactly one reason, and each reason belongs to the stage
//! that drops for it.
//!
//! A [`DropReason`] is a small id into the worker's drop counters. Each crate declares its own reasons with
//! [`drop_reasons!`](crate::drop_reasons) in its own table ([`DropTable`]): a contiguous block of ids, named
//! for the operator. The stack's are below ([`STACK_DROPS`]: Ethernet, ARP, IPv4, fragments, ICMP, neighbours,
//! routes, rings, and the ICMP answers the stack builds); the L4 forwarder's and the L7 stage's live in their
//! crates, whose blocks follow this one. The daemon joins the tables into the list of all reasons and checks at
//! compile time ([`tables_line_up`]) that the blocks leave no gap or overlap and fit in
//! [`DropReason::CAPACITY`].

use std::fmt;

/// Why a frame was dropped: an id into the drop counters (see the module documentation).
///
/// The stack's reasons are associated constants (`DropReason::NotOurMac`); an upper crate's are associated
/// constants of its extension trait (e.g. `xlb_l4::drops::L4Drops`), which reads the same once the trait is
/// imported.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropReason(u8);

impl DropReason {
    /// Room in the drop counters for the reasons of every crate.
    pub const CAPACITY: usize = 64;

    /// The reason with id `index` (evaluated at compile time by [`drop_reasons!`](crate::drop_reasons), which
    /// fails to compile past [`DropReason::CAPACITY`]).
    pub const fn from_index(index: usize) -> Self {
        assert!(index < Self::CAPACITY, "drop reason id beyond DropReason::CAPACITY");
        DropReason(index as u8)
    }

    /// The reason's id: its index in the drop counters.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match STACK_DROPS.name(*self) {
            Some(name) => write!(f, "DropReason({name})"),
            None => write!(f, "DropReason(#{})", self.0),
        }
    }
}

/// One reason as the operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropInfo {
    /// The reason.
    pub reason: DropReason,
    /// Its name in stats and metrics (snake_case).
    pub name: &'static str,
    /// What it means.
    pub doc: &'static str,
}

/// The reasons one crate declares: ids `first..first + reasons.len()`, in order.
#[derive(Debug, Clone, Copy)]
pub struct DropTable {
    /// The crate that drops for them.
    pub owner: &'static str,
    /// The first id of the block.
    pub first: usize,
    /// The reasons, by id.
    pub reasons: &'static [DropInfo],
}

impl DropTable {
    /// The id after the block (where the next crate's block starts).
    pub const fn end(&self) -> usize {
        self.first + self.reasons.len()
    }

    /// The description of `reason`, if it is one of this table's.
    pub fn info(&self, reason: DropReason) -> Option<&'static DropInfo> {
        let reasons: &'static [DropInfo] = self.reasons;
        reasons.get(reason.index().checked_sub(self.first)?)
    }

    /// The name of `reason`, if it is one of this table's.
    pub fn name(&self, reason: DropReason) -> Option<&'static str> {
        self.info(reason).map(|i| i.name)
    }
}

/// Whether `tables`, in order, number their reasons `0..` with no gap or overlap, each table's ids in order,
/// within [`DropReason::CAPACITY`] (for a compile-time check where the tables are joined).
pub const fn tables_line_up(tables: &[&DropTable]) -> bool {
    let mut next = 0;
    let mut t = 0;
    while t < tables.len() {
        let table = tables[t];
        if table.first != next {
            return false;
        }
        let mut r = 0;
        while r < table.reasons.len() {
            if table.reasons[r].reason.index() != next {
                return false;
            }
            next += 1;
            r += 1;
        }
        t += 1;
    }
    next <= DropReason::CAPACITY
}

/// Declares a crate's drop reasons: a table of them, and a constant per reason.
///
/// ```ignore
/// drop_reasons! {
///     /// The L4 forwarder's drop reasons.
///     pub table L4_DROPS = "l4", first xlb_stack::drops::STACK_DROPS.end();
///     /// Drop reasons of the L4 forwarder, as `DropReason::ConnTableFull`.
///     pub trait L4Drops;
///     ConnTableFull => "conn_table_full": "New FULLNAT flow while the connection table is full.",
/// }
/// ```
///
/// The stack itself declares inherent constants with `impl DropReason;` in place of the trait.
#[macro_export]
macro_rules! drop_reasons {
    (
        @table $(#[$table_meta:meta])* $vis:vis $table:ident, $owner:literal, $first:expr;
        $($variant:ident $name:literal $doc:literal)*
    ) => {
        /// Position of each reason in its table.
        #[allow(non_camel_case_types, clippy::enum_variant_names)]
        #[derive(Clone, Copy)]
        enum DropId {
            $($variant,)*
        }

        $(#[$table_meta])*
        $vis const $table: $crate::drops::DropTable = $crate::drops::DropTable {
            owner: $owner,
            first: $first,
            reasons: &[$($crate::drops::DropInfo {
                reason: $crate::drops::DropReason::from_index($first + DropId::$variant as usize),
                name: $name,
                doc: $doc,
            },)*],
        };
    };
    (
        $(#[$table_meta:meta])* $vis:vis table $table:ident = $owner:literal, first $first:expr;
        $(#[$trait_meta:meta])* $trait_vis:vis trait $trait_name:ident;
        $($variant:ident => $name:literal: $doc:literal,)*
    ) => {
        $crate::drop_reasons!(@table $(#[$table_meta])* $vis $table, $owner, $first; $($variant $name $doc)*);

        $(#[$trait_meta])*
        #[allow(non_upper_case_globals)]
        $trait_vis trait $trait_name {
            $(#[doc = $doc] const $variant: $crate::drops::DropReason;)*
        }

        #[allow(non_upper_case_globals)]
        impl $trait_name for $crate::drops::DropReason {
            $(const $variant: $crate::drops::DropReason =
                $crate::drops::DropReason::from_index($first + DropId::$variant as usize);)*
        }
    };
    (
        $(#[$table_meta:meta])* $vis:vis table $table:ident = $owner:literal, first $first:expr;
        impl DropReason;
        $($variant:ident => $name:literal: $doc:literal,)*
    ) => {
        $crate::drop_reasons!(@table $(#[$table_meta])* $vis $table, $owner, $first; $($variant $name $doc)*);

        #[allow(non_upper_case_globals)]
        impl DropReason {
            $(#[doc = $doc]
            pub const $variant: DropReason = DropReason::from_index($first + DropId::$variant as usize);)*
        }
    };
}

drop_reasons! {
    /// The stack's drop reasons: the first block of ids.
    pub table STACK_DROPS = "stack", first 0;
    impl DropReason;
    MalformedEthernet => "malformed_ethernet": "Frame shorter than an Ethernet header.",
    NotOurMac => "not_our_mac": "Unicast frame for another MAC address.",
    UnsupportedEthertype => "unsupported_ethertype": "Neither ARP nor IPv4.",
    MalformedArp => "malformed_arp": "Truncated ARP, or not Ethernet/IPv4 ARP.",
    ArpNotForUs => "arp_not_for_us": "ARP request for an address the appliance does not own.",
    MalformedIpv4 => "malformed_ipv4": "Truncated IPv4 header, bad version, header or total length.",
    BadIpv4Checksum => "bad_ipv4_checksum": "IPv4 header checksum does not verify.",
    FragmentInvalid => "fragment_invalid": "An IPv4 fragment no valid datagram can have: a middle piece whose length is not a multiple of 8, an end past 65535 bytes, no payload, or a fragmented packet too short to be one.",
    FragmentTiny => "fragment_tiny": "A first fragment too short to hold the whole TCP/UDP/ICMP header (RFC 1858's tiny-fragment attack): the datagram is discarded.",
    FragmentOverlap => "fragment_overlap": "An IPv4 fragment overlapping (or repeating) part of its datagram already received: the whole datagram is discarded, as Linux does (RFC 5722's rule).",
    FragmentTooBig => "fragment_too_big": "A fragmented datagram larger than a UMEM frame can carry once reassembled: not reassembled, every fragment dropped.",
    FragmentTimeout => "fragment_timeout": "Fragments of a datagram that did not complete within the reassembly timeout (counted per fragment held).",
    FragmentEvicted => "fragment_evicted": "Fragments of an incomplete datagram given up to make room for a new one (every reassembly slot busy; counted per fragment held).",
    NotOurAddress => "not_our_address": "IPv4 packet for an address the appliance does not own.",
    MalformedIcmp => "malformed_icmp": "Truncated ICMP or bad ICMP checksum.",
    IcmpNotHandled => "icmp_not_handled": "ICMP other than an echo request.",
    MalformedTcp => "malformed_tcp": "Truncated TCP header.",
    MalformedUdp => "malformed_udp": "Truncated UDP header.",
    BadL4Checksum => "bad_l4_checksum": "TCP or UDP checksum does not verify (also partial checksums from a peer with TX checksum offload: see the log).",
    TcpNoListener => "tcp_no_listener": "TCP to a port nothing serves (answered with RST unless it was one).",
    UdpNoListener => "udp_no_listener": "UDP to a port nothing serves (answered with ICMP port unreachable).",
    UnsupportedProtocol => "unsupported_protocol": "IPv4 protocol other than ICMP, TCP or UDP.",
    IcmpRateLimited => "icmp_rate_limited": "An ICMP error or RST was due but the rate limit was reached.",
    NeighbourUnresolved => "neighbour_unresolved": "A packet waiting for ARP resolution timed out or found the queue full.",
    NeighbourTableFull => "neighbour_table_full": "A new next hop found the neighbour table full of entries in use (none idle to evict): raise datapath.neighbours.",
    ArpWrongLink => "arp_wrong_link": "ARP whose sender claims an address of another interface's subnet (e.g. a backend's address on the client link): not learned (answered if it was a request for us).",
    ArpNotInSubnet => "arp_not_in_subnet": "ARP whose sender address is outside the receiving interface's subnets: not learned (answered if it was a request for us).",
    ArpUnsolicited => "arp_unsolicited": "ARP reply (gratuitous or unsolicited) for an address the appliance was not resolving: ARP never creates neighbour entries.",
    ArpLocked => "arp_locked": "ARP changing a neighbour's MAC within locktime (1 s) of its last change: ignored, the first answer wins.",
    NoRoute => "no_route": "No interface or gateway reaches the destination.",
    TxRingFull => "tx_ring_full": "The TX ring had no room for the frame.",
    NoFreeFrame => "no_free_frame": "No free UMEM frame for an originated packet.",
    TtlExceeded => "ttl_exceeded": "A packet to forward (FULLNAT either way, DR) arrived with TTL 0 or 1: dropped, answered with ICMP time exceeded (rate-limited, as icmp_rate), as a router does.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_reasons_are_the_first_block_and_named_once() {
        assert!(tables_line_up(&[&STACK_DROPS]));
        assert_eq!(DropReason::MalformedEthernet.index(), 0);
        assert_eq!(STACK_DROPS.name(DropReason::TtlExceeded), Some("ttl_exceeded"));
        assert_eq!(STACK_DROPS.name(DropReason::from_index(STACK_DROPS.end())), None);
        let mut names: Vec<_> = STACK_DROPS.reasons.iter().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), STACK_DROPS.reasons.len());
        assert_eq!(format!("{:?}", DropReason::NoRoute), "DropReason(no_route)");
    }

    #[test]
    fn tables_with_a_gap_or_an_overlap_do_not_line_up() {
        const NEXT: &[DropInfo] = &[DropInfo {
            reason: DropReason::from_index(STACK_DROPS.end()),
            name: "next",
            doc: "",
        }];
        let table = |first| DropTable {
            owner: "test",
            first,
            reasons: NEXT,
        };
        assert!(tables_line_up(&[&STACK_DROPS, &table(STACK_DROPS.end())]));
        assert!(!tables_line_up(&[&STACK_DROPS, &table(STACK_DROPS.end() + 1)]), "gap");
        assert!(
            !tables_line_up(&[&STACK_DROPS, &table(STACK_DROPS.end() - 1)]),
            "overlap"
        );
        assert!(
            !tables_line_up(&[&table(STACK_DROPS.end()), &STACK_DROPS]),
            "out of order"
        );
    }
}
