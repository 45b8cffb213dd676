//! Which worker owns a flow: the one rule the forwarders' hand-off, the FULLNAT port split and the HA driver's
//! imports all follow. Workers share nothing, so both directions of a flow must meet at its owner.
//!
//! - Packets to a VIP (and a synced connection, keyed by its client side): the flow hash of the client → VIP
//!   key ([`FlowHash`], `hash_5tuple`, the same on every worker and every node) modulo the number of workers.
//! - FULLNAT replies to a local IP: the local port modulo the number of workers (worker `w` hands out only ports
//!   `p` with `p % n == w`).
//! - Health-check probes: worker 0, which runs the checker.

use crate::conn::{FlowHash, FlowKey};

/// The worker that owns the client-side flow `key` (client → VIP) among `workers`.
pub fn flow_owner(key: &FlowKey, workers: usize) -> usize {
    owner_of_hash(FlowHash::of(key), workers)
}

/// [`flow_owner`] with the key's hash already computed.
#[inline]
pub fn owner_of_hash(hash: FlowHash, workers: usize) -> usize {
    (hash.value() % workers.max(1) as u64) as usize
}

/// The worker that hands out (and so owns the connections of) a local port (FULLNAT and L7 upstream alike).
pub use xlb_stack::ports::local_port_owner;

/// The worker that runs the health checker and owns its probes' replies.
pub const PROBE_OWNER: usize = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Proto;
    use crate::sched::hash::hash_5tuple;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn owners_follow_the_flow_hash_and_the_port_split() {
        let key = FlowKey {
            proto: Proto::Tcp,
            src: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40_000),
            dst: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
        };
        let h = hash_5tuple(6, key.src, key.dst);
        for n in 1..=8 {
            assert_eq!(flow_owner(&key, n), (h % n as u64) as usize);
            assert_eq!(local_port_owner(10_007, n), 10_007 % n);
        }
        assert_eq!(flow_owner(&key, 0), 0, "no workers counts as one");
    }
}
