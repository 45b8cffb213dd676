//! What the forwarder remembers between prefetching a received batch and processing it.
//!
//! [`Ipv4Handler::prefetch`](xlb_stack::local::Ipv4Handler::prefetch) hashes each packet's flow key and starts
//! loading its index bucket; the keys and hashes are kept here in batch order. The first packet processed then
//! reads every bucket (loaded by now) and starts loading the entries they point to, and each packet takes its
//! hash back instead of hashing again. Everything is a hint: a packet whose key is not found here is hashed anew.

use crate::conn::{ConnTable, FlowHash, FlowKey};

/// Packets remembered per batch (the largest `datapath.batch_size`); further packets are not remembered.
const CAPACITY: usize = 1024;
/// How many remembered packets a processed packet may skip to find its own (packets the stack dropped
/// before the forwarder saw them).
const LOOKAHEAD: usize = 8;

/// The prefetched packets of the current batch.
pub(super) struct Prefetched {
    items: Vec<(FlowKey, FlowHash)>,
    /// The next item a processed packet should match.
    next: usize,
    /// Whether the entries were prefetched (processing started).
    staged: bool,
}

impl Prefetched {
    /// Empty, with all its memory reserved.
    pub(super) fn new() -> Self {
        Prefetched {
            items: Vec::with_capacity(CAPACITY),
            next: 0,
            staged: false,
        }
    }

    /// Starts loading `key`'s index bucket and remembers its hash. A batch being processed is forgotten first.
    #[inline]
    pub(super) fn push(&mut self, conns: &ConnTable, key: FlowKey, hash: FlowHash) {
        if self.staged || self.items.len() == CAPACITY {
            self.items.clear();
            self.next = 0;
            self.staged = false;
        }
        conns.prefetch(hash);
        self.items.push((key, hash));
    }

    /// Once per batch, before its first packet: starts loading the entries the prefetched buckets point to.
    #[inline]
    pub(super) fn stage(&mut self, conns: &ConnTable) {
        if !self.staged && !self.items.is_empty() {
            for (_, hash) in &self.items {
                conns.prefetch_entry(*hash);
            }
            self.staged = true;
        }
    }

    /// The hash of `key` if it is among the next remembered packets (then they are used up to it), else computed.
    #[inline]
    pub(super) fn hash(&mut self, key: &FlowKey) -> FlowHash {
        let end = self.items.len().min(self.next + LOOKAHEAD);
        if let Some(i) = (self.next..end).find(|&i| self.items[i].0 == *key) {
            self.next = i + 1;
            return self.items[i].1;
        }
        FlowHash::of(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Proto, Timeouts};
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Instant;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            proto: Proto::Tcp,
            src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port),
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
        }
    }

    #[test]
    fn hashes_come_back_in_order_skipping_dropped_packets() {
        let conns = ConnTable::new(16, Timeouts::default(), Instant::now());
        let mut p = Prefetched::new();
        for port in 1..=20 {
            p.push(&conns, key(port), FlowHash::of(&key(port)));
        }
        p.stage(&conns);
        assert_eq!(p.hash(&key(1)), FlowHash::of(&key(1)));
        assert_eq!(p.next, 1);
        // Packets 2..=4 never reached the forwarder.
        assert_eq!(p.hash(&key(5)), FlowHash::of(&key(5)));
        assert_eq!(p.next, 5);
        // Too far ahead: hashed anew, position kept.
        assert_eq!(p.hash(&key(19)), FlowHash::of(&key(19)));
        assert_eq!(p.next, 5);
        // Not prefetched at all.
        assert_eq!(p.hash(&key(99)), FlowHash::of(&key(99)));
        // The next batch starts afresh.
        p.push(&conns, key(7), FlowHash::of(&key(7)));
        assert_eq!((p.items.len(), p.next, p.staged), (1, 0, false));
    }

    #[test]
    fn never_grows_past_its_capacity() {
        let conns = ConnTable::new(16, Timeouts::default(), Instant::now());
        let mut p = Prefetched::new();
        let cap = p.items.capacity();
        for port in 0..(CAPACITY + 10) as u16 {
            p.push(&conns, key(port), FlowHash::of(&key(port)));
        }
        assert_eq!(p.items.capacity(), cap);
        assert_eq!(p.items.len(), 10);
    }
}
