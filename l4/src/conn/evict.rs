//! Which entries a full table gives up first, as conntrack's early drop does: closed connections (TIME_WAIT,
//! CLOSE), then closing ones (FIN_WAIT), each oldest first — the order in which they entered that class.
//!
//! One doubly linked FIFO per class, through link arrays sized once for every entry id: entering, leaving and
//! evicting are O(1) and allocate nothing.

use super::state::ConnState;
use super::wheel::NIL;

/// An entry's eviction class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EvictClass {
    /// Not evictable (handshake, established, UDP).
    Kept = 0,
    /// Both sides closed or reset: evicted first.
    Closed = 1,
    /// One side closed: evicted when no closed entry is left.
    Closing = 2,
}

impl EvictClass {
    /// The class of a connection in `state`.
    pub fn of(state: ConnState) -> EvictClass {
        match state {
            ConnState::TimeWait | ConnState::Close => EvictClass::Closed,
            ConnState::FinWait => EvictClass::Closing,
            ConnState::SynRecv | ConnState::Established | ConnState::Udp => EvictClass::Kept,
        }
    }
}

/// The FIFOs of the evictable classes.
#[derive(Debug)]
pub struct EvictionLists {
    heads: [u32; 3],
    tails: [u32; 3],
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl EvictionLists {
    /// Lists for entry ids `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        EvictionLists {
            heads: [NIL; 3],
            tails: [NIL; 3],
            next: vec![NIL; capacity],
            prev: vec![NIL; capacity],
        }
    }

    /// Bytes reserved.
    pub fn memory_bytes(&self) -> usize {
        (self.next.capacity() + self.prev.capacity()) * std::mem::size_of::<u32>()
    }

    /// Appends `id` (in no list) as the newest of `class`.
    pub fn push(&mut self, class: EvictClass, id: u32) {
        if class == EvictClass::Kept {
            return;
        }
        let c = class as usize;
        let tail = self.tails[c];
        self.prev[id as usize] = tail;
        self.next[id as usize] = NIL;
        if tail == NIL {
            self.heads[c] = id;
        } else {
            self.next[tail as usize] = id;
        }
        self.tails[c] = id;
    }

    /// Takes `id` out of `class`'s list (the class it was pushed with).
    pub fn remove(&mut self, class: EvictClass, id: u32) {
        if class == EvictClass::Kept {
            return;
        }
        let c = class as usize;
        let (prev, next) = (self.prev[id as usize], self.next[id as usize]);
        if prev == NIL {
            self.heads[c] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NIL {
            self.tails[c] = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.prev[id as usize] = NIL;
        self.next[id as usize] = NIL;
    }

    /// The oldest entry of the first non-empty evictable class, with its class.
    pub fn oldest(&self) -> Option<(EvictClass, u32)> {
        [EvictClass::Closed, EvictClass::Closing]
            .into_iter()
            .find_map(|class| Some((class, self.heads[class as usize])).filter(|(_, id)| *id != NIL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_before_closing_each_oldest_first() {
        let mut l = EvictionLists::new(8);
        l.push(EvictClass::Closing, 0);
        l.push(EvictClass::Closed, 1);
        l.push(EvictClass::Closed, 2);
        l.push(EvictClass::Kept, 3);
        l.push(EvictClass::Closed, 4);
        let mut order = vec![];
        while let Some((class, id)) = l.oldest() {
            order.push(id);
            l.remove(class, id);
        }
        assert_eq!(order, vec![1, 2, 4, 0]);
    }

    #[test]
    fn an_entry_leaving_its_class_from_the_middle_keeps_the_order_of_the_rest() {
        let mut l = EvictionLists::new(8);
        for id in 0..5 {
            l.push(EvictClass::Closed, id);
        }
        l.remove(EvictClass::Closed, 2);
        l.remove(EvictClass::Closed, 4);
        l.push(EvictClass::Closing, 2);
        l.push(EvictClass::Closed, 4);
        let mut order = vec![];
        while let Some((class, id)) = l.oldest() {
            order.push((class, id));
            l.remove(class, id);
        }
        use EvictClass::*;
        assert_eq!(
            order,
            vec![(Closed, 0), (Closed, 1), (Closed, 3), (Closed, 4), (Closing, 2)]
        );
    }
}
