//! Maglev consistent hashing (Eisenbud et al., NSDI 2016; IPVS `mh`).
//!
//! Every available server derives a permutation of the `M` table slots (`M` prime) from two hashes of
//! its `ip:port`: `offset = h1 mod M`, `skip = h2 mod (M-1) + 1`, slot_j = `(offset + j*skip) mod M`.
//! Servers take turns claiming their next still-free preferred slot until the table is full; a flow
//! goes to `table[hash mod M]`. Because preferences depend only on server identity, adding or removing
//! one server moves little more than the flows that must move.
//!
//! Weights use proportional turns: each round, every server adds its weight to a credit and claims one
//! slot per `max_weight` of credit, so a server of weight `w` ends up with `≈ w / Σw` of the slots
//! (equal weights reduce to the paper's algorithm). Servers are taken in address order, not list order,
//! so the table depends only on the set of `(addr, weight)` of available servers: every worker and every
//! node with the same configuration builds the same table, which lets another node keep forwarding a
//! flow it never saw (stateless fallback), provided all use the same [`hash`](super::hash) seed.

use super::{flow_hash, hash::server_hashes, ServerView};
use std::net::SocketAddrV4;
use std::sync::Arc;

/// Marks a table slot that belongs to no server (only when no server is available).
const EMPTY: u32 = u32::MAX;

/// A Maglev lookup table: `size` (prime) slots, each holding a server index.
///
/// Immutable once built: an L4 listener's table is built off the datapath and shared between workers as an
/// `Arc<MaglevTable>` (see [`super::shared`]).
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    entries: Vec<u32>,
}

impl std::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.size())
            .field("empty", &(self.entries.first() == Some(&EMPTY)))
            .finish_non_exhaustive()
    }
}

/// Whether `n` is prime (the table size must be).
///
/// Trial division; sizes are at most a few million, so this is fast enough for a build-time check.
// `is_multiple_of` needs Rust 1.87; the workspace's MSRV is 1.85.
#[allow(clippy::manual_is_multiple_of)]
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Per-server population state.
struct Filler {
    index: u32,
    weight: u64,
    /// Next slot in this server's permutation.
    pos: u64,
    skip: u64,
    /// Accumulated turns, in units of weight; a slot costs `max_weight`.
    credit: u64,
}

impl MaglevTable {
    /// Default table size: prime, and large enough (≥ 100 × servers for up to 655 servers) that
    /// slot shares deviate from the ideal by well under 1%.
    pub const DEFAULT_SIZE: usize = 65537;

    /// Builds the lookup table over the available servers of `servers`.
    ///
    /// Weights are honoured: a server of weight `w` gets `≈ w / Σw` of the slots; unhealthy and
    /// zero-weight servers get none. With no available server every lookup returns `None`.
    ///
    /// # Panics
    ///
    /// If `size` is not prime, does not fit a `u32`, or is not greater than the number of available
    /// servers.
    pub fn new(servers: &[ServerView], size: usize) -> MaglevTable {
        assert!(u32::try_from(size).is_ok(), "Maglev table size {size} is too large");
        assert!(is_prime(size), "Maglev table size {size} is not prime");
        let mut available: Vec<(usize, &ServerView)> =
            servers.iter().enumerate().filter(|(_, s)| s.available()).collect();
        assert!(
            size > available.len(),
            "Maglev table size {size} must exceed the {} available servers",
            available.len()
        );
        let mut entries = vec![EMPTY; size];
        if available.is_empty() {
            return MaglevTable { entries };
        }
        // Address order (then list order for duplicates): the table depends on the set, not the list.
        available.sort_by_key(|&(i, s)| (u32::from(*s.addr.ip()), s.addr.port(), i));
        let m = size as u64;
        let mut fillers: Vec<Filler> = available
            .iter()
            .map(|&(i, s)| {
                let (h1, h2) = server_hashes(s.addr);
                Filler {
                    index: i as u32,
                    weight: u64::from(s.weight),
                    pos: h1 % m,
                    skip: h2 % (m - 1) + 1,
                    credit: 0,
                }
            })
            .collect();
        let max_weight = fillers.iter().map(|f| f.weight).max().unwrap_or(1);
        let mut filled = 0;
        'fill: loop {
            for f in &mut fillers {
                f.credit += f.weight;
                if f.credit < max_weight {
                    continue;
                }
                f.credit -= max_weight;
                // `skip` is in 1..M and M is prime, so the walk visits every slot: a free one exists.
                loop {
                    let slot = f.pos as usize;
                    f.pos = (f.pos + f.skip) % m;
                    if entries[slot] == EMPTY {
                        entries[slot] = f.index;
                        break;
                    }
                }
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        MaglevTable { entries }
    }

    /// The server index for a flow hash (`table[hash mod size]`), or `None` if no server was available
    /// when the table was built.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        self.slot(self.slot_of(hash))
    }

    /// The server index for a flow hash among the servers that are available *now*: the table's own server if
    /// it still is, else the next slot's server that is (the table may be a little older than `servers`' health
    /// while a rebuilt one is on its way). `None` if no server is available. O(1) with a current table; a stale
    /// one may scan further (never when no server at all is available).
    #[inline]
    pub fn pick(&self, hash: u64, servers: &[ServerView]) -> Option<usize> {
        let start = self.slot_of(hash);
        let usable = |i: &usize| servers.get(*i).is_some_and(ServerView::available);
        if let Some(i) = self.slot(start).filter(usable) {
            return Some(i);
        }
        if !servers.iter().any(ServerView::available) {
            return None;
        }
        let size = self.size();
        (1..size).filter_map(|k| self.slot((start + k) % size)).find(usable)
    }

    /// Number of slots (the prime given to [`new`](Self::new)).
    #[inline]
    pub fn size(&self) -> usize {
        self.entries.len()
    }

    /// How many slots each of the first `out.len()` server indices owns (for diagnostics and tests).
    pub fn slot_counts(&self, out: &mut [u32]) {
        out.fill(0);
        for &e in &self.entries {
            if let Some(c) = out.get_mut(e as usize) {
                *c += 1;
            }
        }
    }

    #[inline]
    fn slot_of(&self, hash: u64) -> usize {
        (hash % self.entries.len() as u64) as usize
    }

    #[inline]
    fn slot(&self, slot: usize) -> Option<usize> {
        match self.entries[slot] {
            EMPTY => None,
            i => Some(i as usize),
        }
    }
}

/// The `mh` scheduler: a [`MaglevTable`] indexed by [`flow_hash`] of the client's address and port.
///
/// Hashing the port as well as the address (IPVS `mh` hashes the address only unless the `mh-port`
/// flag is set) spreads the many flows of a NAT'd client population over all servers.
///
/// The table is shared (`Arc`): L4 listeners take theirs from the snapshot the control side builds
/// ([`MaglevHash::from_table`], [`MaglevHash::set_table`]) and never call [`rebuild`](MaglevHash::rebuild);
/// other users (L7 upstream groups) build their own.
#[derive(Debug, Clone)]
pub struct MaglevHash {
    table: Arc<MaglevTable>,
}

impl MaglevHash {
    /// Builds a scheduler with a table of [`MaglevTable::DEFAULT_SIZE`] slots.
    ///
    /// # Panics
    ///
    /// If there are `DEFAULT_SIZE` or more available servers.
    pub fn new(servers: &[ServerView]) -> MaglevHash {
        MaglevHash::with_size(servers, MaglevTable::DEFAULT_SIZE)
    }

    /// Builds a scheduler with a table of `size` slots.
    ///
    /// # Panics
    ///
    /// As [`MaglevTable::new`].
    pub fn with_size(servers: &[ServerView], size: usize) -> MaglevHash {
        MaglevHash::from_table(Arc::new(MaglevTable::new(servers, size)))
    }

    /// A scheduler using a table built elsewhere (no allocation).
    pub fn from_table(table: Arc<MaglevTable>) -> MaglevHash {
        MaglevHash { table }
    }

    /// Rebuilds the table (same size) for the new set of available servers. Allocates.
    pub fn rebuild(&mut self, servers: &[ServerView]) {
        self.table = Arc::new(MaglevTable::new(servers, self.table.size()));
    }

    /// Swaps in a table built elsewhere (no allocation).
    pub fn set_table(&mut self, table: Arc<MaglevTable>) {
        self.table = table;
    }

    /// The table in use.
    pub fn table(&self) -> &Arc<MaglevTable> {
        &self.table
    }

    /// The server for a new flow from `client`, or `None`. O(1), no allocation.
    ///
    /// If the table's server is no longer available (the table has not been rebuilt yet), the following
    /// slots are tried in order (they belong to servers in proportion to their shares); see
    /// [`MaglevTable::pick`].
    pub fn pick(&self, servers: &[ServerView], client: SocketAddrV4) -> Option<usize> {
        self.table.pick(flow_hash(client), servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testutil::{histogram, servers, Clients};

    fn flows(n: usize, seed: u64) -> Vec<u64> {
        let mut c = Clients::new(seed);
        (0..n).map(|_| flow_hash(c.next_client())).collect()
    }

    fn assign(t: &MaglevTable, flows: &[u64]) -> Vec<usize> {
        flows.iter().map(|&h| t.lookup(h).unwrap()).collect()
    }

    #[test]
    fn primality() {
        let primes: Vec<usize> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(MaglevTable::DEFAULT_SIZE));
        assert!(is_prime(251) && is_prime(65521) && !is_prime(65535) && !is_prime(65536));
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn non_prime_size_is_rejected() {
        MaglevTable::new(&servers(&[1, 1]), 65536);
    }

    #[test]
    #[should_panic(expected = "must exceed")]
    fn size_must_exceed_server_count() {
        MaglevTable::new(&servers(&[1, 1, 1, 1, 1, 1]), 5);
    }

    #[test]
    fn every_slot_is_filled_and_equal_weights_share_evenly() {
        let srv = servers(&[1; 7]);
        let t = MaglevTable::new(&srv, MaglevTable::DEFAULT_SIZE);
        assert_eq!(t.size(), 65537);
        let mut counts = [0u32; 7];
        t.slot_counts(&mut counts);
        assert_eq!(counts.iter().sum::<u32>(), 65537);
        // Turn-taking gives each server its share within one slot.
        let ideal = 65537 / 7;
        for &c in &counts {
            assert!(c == ideal || c == ideal + 1, "{counts:?}");
        }
    }

    #[test]
    fn slots_are_proportional_to_weights() {
        let weights = [1, 2, 3, 4, 10];
        let mut srv = servers(&weights);
        srv.push(ServerView {
            healthy: false,
            ..srv[0]
        }); // unavailable: no slots
        srv.push(ServerView { weight: 0, ..srv[1] }); // drained: no slots
        let t = MaglevTable::new(&srv, MaglevTable::DEFAULT_SIZE);
        let mut counts = [0u32; 7];
        t.slot_counts(&mut counts);
        assert_eq!(&counts[5..], &[0, 0]);
        let total: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let expected = 65537.0 * f64::from(w) / f64::from(total);
            let err = (f64::from(*c) - expected).abs() / expected;
            assert!(err < 0.02, "share off by {:.2}% : {counts:?}", err * 100.0);
        }
        // And the flows follow the slots.
        let h = histogram(7, assign(&t, &flows(100_000, 1)));
        let share = f64::from(h[4]) / 100_000.0;
        assert!((share - 0.5).abs() < 0.02, "{h:?}");
    }

    #[test]
    fn table_depends_on_the_server_set_not_the_list_order() {
        let srv = servers(&[1, 2, 3, 4]);
        let mut rev = srv.clone();
        rev.reverse();
        let a = MaglevTable::new(&srv, 4099);
        let b = MaglevTable::new(&rev, 4099);
        for slot in 0..4099u64 {
            assert_eq!(a.lookup(slot).unwrap(), 3 - b.lookup(slot).unwrap());
        }
    }

    #[test]
    fn removing_a_server_moves_almost_only_its_flows() {
        let mut srv = servers(&[1; 5]);
        let fl = flows(100_000, 2);
        let before = assign(&MaglevTable::new(&srv, MaglevTable::DEFAULT_SIZE), &fl);
        srv[3].healthy = false;
        let after = assign(&MaglevTable::new(&srv, MaglevTable::DEFAULT_SIZE), &fl);
        let (mut others, mut others_moved, mut orphans) = (0, 0, [0u32; 5]);
        for (&b, &a) in before.iter().zip(&after) {
            assert_ne!(a, 3);
            if b == 3 {
                orphans[a] += 1;
            } else {
                others += 1;
                others_moved += u32::from(a != b);
            }
        }
        let moved = f64::from(others_moved) / f64::from(others);
        assert!(moved <= 0.01, "{:.3}% of unaffected flows moved", moved * 100.0);
        // The removed server's ~20k flows spread evenly over the 4 others.
        let orphan_total: u32 = orphans.iter().sum();
        for i in [0, 1, 2, 4] {
            let share = f64::from(orphans[i]) / f64::from(orphan_total);
            assert!((share - 0.25).abs() < 0.05, "{orphans:?}");
        }
    }

    #[test]
    fn adding_a_server_moves_about_one_in_n_plus_one() {
        let mut srv = servers(&[1; 6]);
        srv[5].healthy = false;
        let fl = flows(100_000, 3);
        let before = assign(&MaglevTable::new(&srv, MaglevTable::DEFAULT_SIZE), &fl);
        srv[5].healthy = true;
        let after = assign(&MaglevTable::new(&srv, MaglevTable::DEFAULT_SIZE), &fl);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / 1e5;
        let to_new = after.iter().filter(|&&a| a == 5).count() as f64 / 1e5;
        let ideal = 1.0 / 6.0;
        assert!(moved >= ideal - 0.02 && moved <= ideal + 0.03, "moved {moved}");
        assert!((to_new - ideal).abs() < 0.02, "new server got {to_new}");
    }

    #[test]
    fn pick_uses_address_and_port_and_is_deterministic() {
        let srv = servers(&[1, 1, 1, 1]);
        let a = MaglevHash::new(&srv);
        let b = MaglevHash::new(&srv); // another worker, or another node
        let ip = std::net::Ipv4Addr::new(203, 0, 113, 9);
        let mut seen = [false; 4];
        for port in 1024..2024 {
            let c = SocketAddrV4::new(ip, port);
            let i = a.pick(&srv, c).unwrap();
            assert_eq!(b.pick(&srv, c), Some(i));
            assert_eq!(a.table().lookup(flow_hash(c)), Some(i));
            seen[i] = true;
        }
        assert_eq!(seen, [true; 4], "one NAT address must still spread by port");
    }

    #[test]
    fn empty_table_and_stale_fallback() {
        let mut srv = servers(&[1, 1]);
        srv[0].healthy = false;
        srv[1].weight = 0;
        let t = MaglevTable::new(&srv, 251);
        assert!((0..251).all(|h| t.lookup(h).is_none()));
        // Built with both up; server 0 then dies without a rebuild: its flows go to server 1.
        let up = servers(&[1, 1]);
        let mh = MaglevHash::with_size(&up, 251);
        let mut down = up.clone();
        down[0].healthy = false;
        let mut c = Clients::new(4);
        assert!((0..500).all(|_| mh.pick(&down, c.next_client()) == Some(1)));
    }
}
