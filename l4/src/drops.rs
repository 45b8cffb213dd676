//! The L4 forwarder's drop reasons (the block of ids after the stack's; see [`xlb_stack::drops`]). Import
//! [`L4Drops`] to name them as `DropReason::ConnTableFull`.

use xlb_stack::drop_reasons;
use xlb_stack::drops::STACK_DROPS;

drop_reasons! {
    /// The L4 forwarder's drop reasons: the block of ids after the stack's.
    pub table L4_DROPS = "l4", first STACK_DROPS.end();
    /// The L4 forwarder's drop reasons, as associated constants of [`xlb_stack::drops::DropReason`].
    pub trait L4Drops;
    InvalidSource => "invalid_source": "A new flow from a source that can never be a client (0/8, 127/8, multicast, 240/4, broadcast, or the appliance's own addresses): no entry, no server.",
    InvalidTcpFlags => "invalid_tcp_flags": "A SYN that also carries FIN or RST (conntrack's invalid): no entry, no server.",
    NoHealthyServer => "no_healthy_server": "New flow for a listener whose servers are all down or drained (answered with RST or ICMP unreachable).",
    ConnTableFull => "conn_table_full": "New FULLNAT flow while the connection table is full.",
    LocalPortsExhausted => "local_ports_exhausted": "New FULLNAT flow with no free local port on the local IP.",
    NoConnection => "no_connection": "Packet of no known connection that cannot start one (not a SYN, or a reply to a free local port).",
    SynCookieInvalid => "syn_cookie_invalid": "ACK without a connection to a SYN-proxied listener whose cookie is wrong or expired (forged, or a handshake older than 64-128 s): no entry, no server, no local port.",
    SynProxyPending => "syn_proxy_pending": "Client segment of a SYN-proxied connection before the server's SYN-ACK reached xlb: dropped, the client retransmits it.",
    ListenerConnLimit => "listener_conn_limit": "New flow of a listener at its connection cap (max_conns / [l4] listener_max_conns): no entry, no local port.",
    HandoffFull => "handoff_full": "Frame for another worker's flow, but the hand-off queue was full.",
    ServerRemoved => "server_removed": "Packet of a connection whose server was removed, with the reset policy (answered with RST or ICMP unreachable).",
    HaQueueFull => "ha_queue_full": "VRRP or sync packet while the queue to the HA driver was full.",
}
