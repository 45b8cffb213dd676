//! High availability (VRRP v3 election, session sync over multicast, takeover).
//!
//! - [`vrrp`]: VRRP version 3 (RFC 5798) for IPv4, a sans-IO virtual router deciding which appliance holds the
//!   virtual addresses; interoperates with keepalived.
//! - [`frames`]: the frames HA sends through the datapath (adverts, sync datagrams, gratuitous ARP).
//! - [`net`]: kernel-socket helpers (multicast membership; VRRP over kernel sockets for the interop test).
//! - [`sync`]: session sync, sans-IO: authenticated, reliable, batched connection-table replication between
//!   nodes, with bulk resync of a (re)starting node.

pub mod frames;
pub mod net;
pub mod sync;
pub mod vrrp;
