//! Every drop reason the datapath counts: the stack's, then the L4 forwarder's, then the L7 stage's tables
//! joined in counter order (each crate declares its own; see [`xlb_stack::drops`]).

use xlb_l4::drops::L4_DROPS;
use xlb_l7::drops::L7_DROPS;
use xlb_stack::drops::{tables_line_up, DropInfo, DropTable, STACK_DROPS};

/// The tables of every crate that drops, in id order.
pub const DROP_TABLES: [&DropTable; 3] = [&STACK_DROPS, &L4_DROPS, &L7_DROPS];

// Each block starts where the previous one ends, and all of them fit in the counters.
const _: () = assert!(
    tables_line_up(&DROP_TABLES),
    "drop reason tables leave a gap, overlap, or exceed DropReason::CAPACITY"
);

/// Every drop reason, in counter order (what stats and metrics show).
pub fn all() -> impl Iterator<Item = &'static DropInfo> {
    DROP_TABLES.into_iter().flat_map(|t| t.reasons.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators' dashboards and alerts use these names: a rename or a lost reason must be a deliberate change.
    #[test]
    fn every_reason_keeps_its_name() {
        let names: Vec<_> = all().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                // stack
                "malformed_ethernet",
                "not_our_mac",
                "unsupported_ethertype",
                "malformed_arp",
                "arp_not_for_us",
                "malformed_ipv4",
                "bad_ipv4_checksum",
                "fragment_invalid",
                "fragment_tiny",
                "fragment_overlap",
                "fragment_too_big",
                "fragment_timeout",
                "fragment_evicted",
                "not_our_address",
                "malformed_icmp",
                "icmp_not_handled",
                "malformed_tcp",
                "malformed_udp",
                "bad_l4_checksum",
                "tcp_no_listener",
                "udp_no_listener",
                "unsupported_protocol",
                "icmp_rate_limited",
                "neighbour_unresolved",
                "neighbour_table_full",
                "arp_wrong_link",
                "arp_not_in_subnet",
                "arp_unsolicited",
                "arp_locked",
                "no_route",
                "tx_ring_full",
                "no_free_frame",
                "ttl_exceeded",
                // l4
                "invalid_source",
                "invalid_tcp_flags",
                "no_healthy_server",
                "conn_table_full",
                "local_ports_exhausted",
                "no_connection",
                "syn_cookie_invalid",
                "syn_proxy_pending",
                "listener_conn_limit",
                "handoff_full",
                "server_removed",
                "ha_queue_full",
                // l7
                "l7_connection_limit",
            ]
        );
        for (id, r) in all().enumerate() {
            assert_eq!(r.reason.index(), id, "{}", r.name);
        }
    }
}
