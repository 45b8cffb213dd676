//! FULLNAT local ports: per local IP, the ports this worker may use, recycled oldest-first.
//!
//! Worker `w` of `n` owns the ports `p` with `p % n == w`, so a backend's reply to `LIP:p` can be handed to the
//! worker holding the connection without any shared state. A port is taken when a connection is created and
//! returned when its entry expires — after the TIME_WAIT/CLOSE timeouts, which outlast the backend's own
//! TIME_WAIT — or when the client starts a new connection on the same addresses (the entry ends early). Returned
//! ports go to the back of the queue: the longest-idle port is reused first, after every other free port.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// One local IP's ports: free ones in reuse order, and which are in use (imported connections may use a port
/// that is still queued; it is skipped when it comes up).
#[derive(Debug)]
struct Pool {
    free: VecDeque<u16>,
    taken: Vec<u64>,
}

impl Pool {
    fn is_taken(&self, port: u16) -> bool {
        self.taken[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    fn set_taken(&mut self, port: u16, taken: bool) {
        let (word, bit) = (usize::from(port) / 64, 1u64 << (port % 64));
        if taken {
            self.taken[word] |= bit;
        } else {
            self.taken[word] &= !bit;
        }
    }
}

/// Local port pools of one worker.
#[derive(Debug)]
pub struct LocalPorts {
    pools: HashMap<Ipv4Addr, Pool>,
    min: u16,
    max: u16,
    worker: u16,
    workers: u16,
}

impl LocalPorts {
    /// Pools for `local_ips`, with the ports in `min..=max` that belong to `worker` of `workers`.
    pub fn new(local_ips: &[Ipv4Addr], min: u16, max: u16, worker: usize, workers: usize) -> Self {
        let (worker, workers) = (worker as u16, workers.max(1) as u16);
        let ports: VecDeque<u16> = (min..=max).filter(|p| p % workers == worker).collect();
        let pools = local_ips
            .iter()
            .map(|ip| {
                (
                    *ip,
                    Pool {
                        free: ports.clone(),
                        taken: vec![0; 1024],
                    },
                )
            })
            .collect();
        LocalPorts {
            pools,
            min,
            max,
            worker,
            workers,
        }
    }

    /// Takes a free port on `ip`, or `None` if the pool is empty or `ip` is not a local IP.
    pub fn take(&mut self, ip: Ipv4Addr) -> Option<u16> {
        let pool = self.pools.get_mut(&ip)?;
        while let Some(port) = pool.free.pop_front() {
            if !pool.is_taken(port) {
                pool.set_taken(port, true);
                return Some(port);
            }
        }
        None
    }

    /// Marks `port` on `ip` as used by a connection that did not take it here (synced from a peer).
    pub fn mark_taken(&mut self, ip: Ipv4Addr, port: u16) {
        if let Some(pool) = self.pools.get_mut(&ip) {
            pool.set_taken(port, true);
        }
    }

    /// Returns a port taken earlier.
    pub fn give_back(&mut self, ip: Ipv4Addr, port: u16) {
        debug_assert!(self.owns(port));
        if let Some(pool) = self.pools.get_mut(&ip) {
            if pool.is_taken(port) {
                pool.set_taken(port, false);
                pool.free.push_back(port);
            }
        }
    }

    /// Whether `port` is in the FULLNAT range (any worker's).
    pub fn in_range(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    /// Whether `port` belongs to this worker.
    pub fn owns(&self, port: u16) -> bool {
        self.in_range(port) && port % self.workers == self.worker
    }

    /// The worker owning `port` (which must be in range).
    pub fn owner(&self, port: u16) -> usize {
        usize::from(port % self.workers)
    }

    /// Free ports on `ip`.
    pub fn free(&self, ip: Ipv4Addr) -> usize {
        self.pools
            .get(&ip)
            .map_or(0, |p| p.free.iter().filter(|port| !p.is_taken(**port)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

    #[test]
    fn workers_own_disjoint_ports_and_recycle_oldest_first() {
        let mut w0 = LocalPorts::new(&[LIP], 10_000, 10_009, 0, 2);
        let mut w1 = LocalPorts::new(&[LIP], 10_000, 10_009, 1, 2);
        let a: Vec<u16> = std::iter::from_fn(|| w0.take(LIP)).collect();
        let b: Vec<u16> = std::iter::from_fn(|| w1.take(LIP)).collect();
        assert_eq!(a, vec![10_000, 10_002, 10_004, 10_006, 10_008]);
        assert_eq!(b, vec![10_001, 10_003, 10_005, 10_007, 10_009]);
        assert!(a.iter().all(|p| w0.owner(*p) == 0) && b.iter().all(|p| w0.owner(*p) == 1));
        assert_eq!(w0.take(LIP), None, "exhausted");
        w0.give_back(LIP, 10_004);
        w0.give_back(LIP, 10_000);
        assert_eq!(w0.take(LIP), Some(10_004));
        assert_eq!(w0.take(LIP), Some(10_000));
        assert_eq!(w0.take(Ipv4Addr::new(198, 19, 0, 99)), None, "not a local IP");
    }

    #[test]
    fn a_taken_port_is_not_handed_out_again_until_returned() {
        let mut p = LocalPorts::new(&[LIP], 20_000, 20_999, 0, 1);
        let mut taken = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(taken.insert(p.take(LIP).unwrap()));
        }
        assert_eq!(p.free(LIP), 0);
    }

    #[test]
    fn imported_ports_are_skipped_until_given_back() {
        let mut p = LocalPorts::new(&[LIP], 30_000, 30_003, 0, 1);
        p.mark_taken(LIP, 30_000);
        p.mark_taken(LIP, 30_002);
        assert_eq!(p.free(LIP), 2);
        assert_eq!(p.take(LIP), Some(30_001));
        assert_eq!(p.take(LIP), Some(30_003));
        assert_eq!(p.take(LIP), None);
        p.give_back(LIP, 30_000);
        assert_eq!(p.take(LIP), Some(30_000));
    }
}
