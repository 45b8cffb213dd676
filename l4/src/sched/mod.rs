//! Schedulers: choose a server for a new flow, with IPVS semantics.
//!
//! Each listener owns one [`Scheduler`] per worker. The scheduler is a plain data structure: it sees the
//! group's servers as a slice of [`ServerView`] (the index of a server in that slice is its identity and
//! must stay stable), is [rebuilt](Scheduler::rebuild) when servers are added, removed, re-weighted or
//! change health, and [picks](Scheduler::pick) a server index for each new flow. Existing flows are
//! pinned by the connection table, never by the scheduler.
//!
//! | kind | algorithm | module |
//! |------|-----------|--------|
//! | [`Rr`](SchedulerKind::Rr)   | round robin over available servers | [`rr`] |
//! | [`Wrr`](SchedulerKind::Wrr) | IPVS interleaved weighted round robin | [`wrr`] |
//! | [`Wlc`](SchedulerKind::Wlc) | weighted least connections, `(active*256 + inactive) / weight` | [`wlc`] |
//! | [`Sh`](SchedulerKind::Sh)   | source-address hashing over a 256-bucket weighted table, with fallback | [`sh`] |
//! | [`Mh`](SchedulerKind::Mh)   | Maglev consistent hashing of the client `ip:port` | [`maglev`] |
//!
//! A server is *available* when it is healthy and has a non-zero weight ([`ServerView::available`]);
//! weight 0 drains a server: no scheduler picks it for new flows, its existing flows continue.
//!
//! [`Scheduler::pick`] never allocates. rr, wrr and wlc take O(number of servers) at worst; sh and mh
//! take O(1), plus at most 512 bucket probes when sh falls back from an unavailable server, and a table
//! scan for mh only if its table is stale (servers changed without a rebuild). [`Scheduler::new`] and
//! [`Scheduler::rebuild`] may allocate (mh builds a 65537-entry table; L4 listeners instead take theirs,
//! built once off the datapath, from [`shared`]). `pick` also stays correct, and terminates, when the servers slice changed without
//! a `rebuild` (it never returns an out-of-range or unavailable index), but the distribution is only
//! guaranteed after `rebuild`.
//!
//! The hashes used by sh and mh are in [`hash`]; they use a fixed seed so that all workers and all nodes
//! agree.

use std::net::SocketAddrV4;

pub mod hash;
pub mod maglev;
pub mod rr;
pub mod sh;
pub mod shared;
pub mod wlc;
pub mod wrr;

pub use hash::{flow_hash, hash_5tuple, hash_addr, HASH_SEED};
pub use maglev::{MaglevHash, MaglevTable};
pub use rr::RoundRobin;
pub use sh::SourceHash;
pub use shared::{MaglevBuilder, MaglevTables};
pub use wlc::WeightedLeastConn;
pub use wrr::WeightedRoundRobin;

/// A server as the scheduler sees it (index = position in the group's server list, stable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerView {
    /// The server's address (its identity for the hashing schedulers).
    pub addr: SocketAddrV4,
    /// Relative weight; 0 = drain: never picked for new flows.
    pub weight: u32,
    /// Unhealthy servers are never picked.
    pub healthy: bool,
    /// Active (established) connections, for wlc.
    pub active: u32,
    /// Other (not established: handshaking, closing, UDP) connections, for wlc.
    pub inactive: u32,
}

impl ServerView {
    /// Whether the server may receive new flows: healthy and weight > 0.
    #[inline]
    pub fn available(&self) -> bool {
        self.healthy && self.weight > 0
    }
}

/// Which scheduling algorithm a listener uses (configuration names: `rr`, `wrr`, `wlc`, `sh`, `mh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Round robin.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Weighted least connections.
    Wlc,
    /// Source hashing.
    Sh,
    /// Maglev hashing.
    Mh,
}

impl SchedulerKind {
    /// The configuration name (`"rr"`, `"wrr"`, `"wlc"`, `"sh"`, `"mh"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Mh => "mh",
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listener's scheduler state (per worker). Enum dispatch over the concrete schedulers.
#[derive(Debug, Clone)]
pub enum Scheduler {
    /// Round robin.
    Rr(RoundRobin),
    /// Interleaved weighted round robin.
    Wrr(WeightedRoundRobin),
    /// Weighted least connections.
    Wlc(WeightedLeastConn),
    /// Source hashing.
    Sh(SourceHash),
    /// Maglev hashing (table of [`MaglevTable::DEFAULT_SIZE`] entries).
    Mh(MaglevHash),
}

impl Scheduler {
    /// Creates a scheduler of `kind` for `servers`.
    ///
    /// # Panics
    ///
    /// For [`SchedulerKind::Mh`], if there are [`MaglevTable::DEFAULT_SIZE`] or more available servers.
    pub fn new(kind: SchedulerKind, servers: &[ServerView]) -> Scheduler {
        match kind {
            SchedulerKind::Rr => Scheduler::Rr(RoundRobin::new(servers)),
            SchedulerKind::Wrr => Scheduler::Wrr(WeightedRoundRobin::new(servers)),
            SchedulerKind::Wlc => Scheduler::Wlc(WeightedLeastConn::new(servers)),
            SchedulerKind::Sh => Scheduler::Sh(SourceHash::new(servers)),
            SchedulerKind::Mh => Scheduler::Mh(MaglevHash::new(servers)),
        }
    }

    /// The algorithm of this scheduler.
    pub fn kind(&self) -> SchedulerKind {
        match self {
            Scheduler::Rr(_) => SchedulerKind::Rr,
            Scheduler::Wrr(_) => SchedulerKind::Wrr,
            Scheduler::Wlc(_) => SchedulerKind::Wlc,
            Scheduler::Sh(_) => SchedulerKind::Sh,
            Scheduler::Mh(_) => SchedulerKind::Mh,
        }
    }

    /// Rebuild after servers were added/removed or weight/health changed (not needed for active/inactive
    /// changes). May allocate.
    ///
    /// # Panics
    ///
    /// For mh, if there are as many available servers as table entries.
    pub fn rebuild(&mut self, servers: &[ServerView]) {
        match self {
            Scheduler::Rr(s) => s.rebuild(servers),
            Scheduler::Wrr(s) => s.rebuild(servers),
            Scheduler::Wlc(s) => s.rebuild(servers),
            Scheduler::Sh(s) => s.rebuild(servers),
            Scheduler::Mh(s) => s.rebuild(servers),
        }
    }

    /// Picks the server index for a new flow from `client`; `None` if no server is available.
    ///
    /// Never allocates. The returned index is always `< servers.len()` and designates an available
    /// server. rr, wrr and wlc ignore `client`; sh hashes its address, mh its address and port.
    #[inline]
    pub fn pick(&mut self, servers: &[ServerView], client: SocketAddrV4) -> Option<usize> {
        match self {
            Scheduler::Rr(s) => s.pick(servers),
            Scheduler::Wrr(s) => s.pick(servers),
            Scheduler::Wlc(s) => s.pick(servers),
            Scheduler::Sh(s) => s.pick(servers, client),
            Scheduler::Mh(s) => s.pick(servers, client),
        }
    }
}

/// Helpers shared by the scheduler unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use super::ServerView;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// Healthy servers 10.1.0.(i+1):8080 with the given weights and no connections.
    pub fn servers(weights: &[u32]) -> Vec<ServerView> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| ServerView {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, i as u8 + 1), 8080),
                weight,
                healthy: true,
                active: 0,
                inactive: 0,
            })
            .collect()
    }

    /// A deterministic pseudo-random client generator (SplitMix64), so tests need no `rand`.
    pub struct Clients(u64);

    impl Clients {
        pub fn new(seed: u64) -> Clients {
            Clients(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            crate::sched::hash::mix64(self.0)
        }

        pub fn next_client(&mut self) -> SocketAddrV4 {
            let r = self.next_u64();
            SocketAddrV4::new(Ipv4Addr::from(r as u32), (r >> 32) as u16 | 1024)
        }
    }

    /// Counts how many of `picks` went to each of `n` servers.
    pub fn histogram(n: usize, picks: impl IntoIterator<Item = usize>) -> Vec<u32> {
        let mut h = vec![0; n];
        for p in picks {
            h[p] += 1;
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{servers, Clients};
    use super::*;

    const ALL: [SchedulerKind; 5] = [
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Wlc,
        SchedulerKind::Sh,
        SchedulerKind::Mh,
    ];

    #[test]
    fn kind_round_trips_and_deserializes_lowercase() {
        #[derive(serde::Deserialize)]
        struct Conf {
            scheduler: SchedulerKind,
        }
        for kind in ALL {
            let s = Scheduler::new(kind, &servers(&[1]));
            assert_eq!(s.kind(), kind);
            let conf: Conf = toml::from_str(&format!("scheduler = \"{kind}\"")).unwrap();
            assert_eq!(conf.scheduler, kind);
        }
        assert!(toml::from_str::<Conf>("scheduler = \"Rr\"").is_err());
        assert!(toml::from_str::<Conf>("scheduler = \"lc\"").is_err());
    }

    #[test]
    fn drained_server_is_never_picked_by_any_scheduler() {
        let mut srv = servers(&[3, 1, 2, 5]);
        srv[1].weight = 0; // drain
        srv[3].weight = 0; // drain (the heaviest: must not leak through wrr's max weight either)
        for kind in ALL {
            let mut s = Scheduler::new(kind, &srv);
            let mut clients = Clients::new(7);
            let mut seen = [false; 4];
            for _ in 0..2000 {
                let i = s.pick(&srv, clients.next_client()).unwrap();
                assert!(i == 0 || i == 2, "{kind} picked drained server {i}");
                seen[i] = true;
            }
            assert!(seen[0] && seen[2], "{kind} must still use both available servers");
        }
    }

    #[test]
    fn drain_after_build_with_rebuild() {
        let mut srv = servers(&[1, 1, 1]);
        for kind in ALL {
            srv[1].weight = 1;
            let mut s = Scheduler::new(kind, &srv);
            srv[1].weight = 0;
            s.rebuild(&srv);
            let mut clients = Clients::new(11);
            for _ in 0..1000 {
                assert_ne!(s.pick(&srv, clients.next_client()), Some(1), "{kind}");
            }
        }
    }

    #[test]
    fn all_unavailable_gives_none_for_every_kind() {
        let mut srv = servers(&[1, 2, 0]);
        srv[0].healthy = false;
        srv[1].healthy = false;
        for kind in ALL {
            let mut s = Scheduler::new(kind, &srv);
            let c = SocketAddrV4::new([198, 51, 100, 7].into(), 5555);
            assert_eq!(s.pick(&srv, c), None, "{kind}");
            // Empty groups too.
            let mut e = Scheduler::new(kind, &[]);
            assert_eq!(e.pick(&[], c), None, "{kind} empty");
        }
    }

    #[test]
    fn stale_state_never_yields_an_unavailable_or_out_of_range_index() {
        // The caller forgot to rebuild after a server went down and another was removed: picks must still
        // be valid (only the distribution is unspecified).
        let srv = servers(&[4, 1, 3, 2]);
        for kind in ALL {
            let mut s = Scheduler::new(kind, &srv);
            let mut stale = srv.clone();
            stale[0].healthy = false;
            stale.pop();
            let mut clients = Clients::new(3);
            for _ in 0..500 {
                let i = s.pick(&stale, clients.next_client()).unwrap();
                assert!(i < stale.len() && stale[i].available(), "{kind} picked {i}");
            }
            for v in &mut stale {
                v.healthy = false;
            }
            assert_eq!(s.pick(&stale, clients.next_client()), None, "{kind}");
        }
    }

    #[test]
    fn recovered_server_is_used_again_after_rebuild() {
        let mut srv = servers(&[1, 1]);
        srv[0].healthy = false;
        for kind in ALL {
            let mut s = Scheduler::new(kind, &srv);
            let mut clients = Clients::new(5);
            assert!((0..200).all(|_| s.pick(&srv, clients.next_client()) == Some(1)));
            let mut up = srv.clone();
            up[0].healthy = true;
            s.rebuild(&up);
            assert!(
                (0..200).any(|_| s.pick(&up, clients.next_client()) == Some(0)),
                "{kind}"
            );
        }
    }
}
