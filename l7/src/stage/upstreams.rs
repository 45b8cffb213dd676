//! The servers L7 proxies to: groups with their scheduler and health (the board L4's health checker writes),
//! local ports for new upstream connections (from the worker's pools, shared with L4: [`xlb_stack::ports`]),
//! and the idle connections kept per server for reuse.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::socket::tcp::State;
use xlb_l4::sched::{MaglevHash, MaglevTable, MaglevTables, Scheduler, SchedulerKind, ServerView};
use xlb_l4::stats::HealthBoard;
use xlb_stack::ports::LocalPorts;

use crate::affinity::{rendezvous, server_identity};
use crate::rules::GroupId;
use crate::sticky::ServerId;
use crate::tcp::{ConnId, Gone, TcpHost};
use crate::tls::link::TlsLink;
use crate::tls::upstream::UpstreamTls;

/// A server of a group as the stage is configured with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Address.
    pub addr: SocketAddrV4,
    /// Weight (0: drained, no new requests).
    pub weight: u32,
    /// Its target on the health board, if its group is checked.
    pub target: Option<usize>,
}

/// A group as the stage is configured with it (index = [`GroupId`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// Name (logs).
    pub name: String,
    /// How a server is picked for a new upstream connection.
    pub scheduler: SchedulerKind,
    /// Servers (index = [`ServerId`], also in sticky cookies).
    pub servers: Vec<ServerSpec>,
    /// HTTPS to the servers (`None`: plain HTTP).
    pub tls: Option<Arc<UpstreamTls>>,
}

/// A kept idle connection.
pub struct IdleConn {
    /// The connection.
    pub conn: ConnId,
    /// Its TLS (groups with `tls`).
    pub tls: Option<Box<TlsLink>>,
    since: Instant,
}

struct Server {
    spec: ServerSpec,
    /// Idle kept connections, oldest first.
    idle: VecDeque<IdleConn>,
}

struct Group {
    servers: Vec<Server>,
    tls: Option<Arc<UpstreamTls>>,
    scheduler: Scheduler,
    views: Vec<ServerView>,
    /// The health board generation the views were built at.
    seen: u64,
}

/// Why no upstream connection could be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoUpstream {
    /// No healthy server with weight > 0.
    NoHealthyServer,
    /// No free local port towards the server.
    NoLocalPort,
    /// The connection limit is reached.
    ConnectionLimit,
}

/// Upstream state of one worker.
pub struct Upstreams {
    groups: Vec<Group>,
    /// Group names (index = [`GroupId`]).
    names: Vec<String>,
    board: Arc<HealthBoard>,
    keepalive: usize,
    idle_timeout: Duration,
    idle_count: usize,
}

impl Upstreams {
    /// Groups `specs`, health from `board`, the tables of `mh` groups from `maglev` (the control side's
    /// snapshot, [`super::maglev`]), `keepalive` idle connections kept per server for at most `idle_timeout`.
    pub fn new(
        specs: &[GroupSpec],
        board: Arc<HealthBoard>,
        maglev: &MaglevTables,
        keepalive: usize,
        idle_timeout: Duration,
    ) -> Upstreams {
        let groups = specs
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let views: Vec<ServerView> = g.servers.iter().map(|s| server_view(s, &board)).collect();
                Group {
                    servers: g
                        .servers
                        .iter()
                        .map(|s| Server {
                            spec: s.clone(),
                            idle: VecDeque::new(),
                        })
                        .collect(),
                    scheduler: match (g.scheduler, maglev.get(i)) {
                        (SchedulerKind::Mh, Some(table)) => Scheduler::Mh(MaglevHash::from_table(table.clone())),
                        // Only a snapshot that lacks the group's table (never sent) makes the worker build one.
                        (kind, _) => Scheduler::new(kind, &views),
                    },
                    tls: g.tls.clone(),
                    views,
                    seen: board.generation(),
                }
            })
            .collect();
        Upstreams {
            groups,
            names: specs.iter().map(|g| g.name.clone()).collect(),
            board,
            keepalive,
            idle_timeout,
            idle_count: 0,
        }
    }

    /// Applies changed groups and a new health board (a live configuration change). Idle connections to servers
    /// still in the same group are kept; the others are closed.
    pub fn update(
        &mut self,
        now: Instant,
        host: &mut TcpHost,
        specs: &[GroupSpec],
        board: Arc<HealthBoard>,
        maglev: &MaglevTables,
    ) {
        let mut old: Vec<(String, Option<Arc<UpstreamTls>>, Server)> = Vec::new();
        for (g, name) in std::mem::take(&mut self.groups).into_iter().zip(&self.names) {
            old.extend(g.servers.into_iter().map(|s| (name.clone(), g.tls.clone(), s)));
        }
        let fresh = Upstreams::new(specs, board, maglev, self.keepalive, self.idle_timeout);
        self.groups = fresh.groups;
        self.names = fresh.names;
        self.board = fresh.board;
        self.idle_count = 0;
        for (group, tls, server) in old {
            // Kept only in the same group, over the same TLS settings.
            let same = |g: usize| self.groups[g].tls == tls;
            let target = self
                .names
                .iter()
                .position(|n| *n == group)
                .filter(|&g| same(g))
                .and_then(|g| {
                    Some((
                        g,
                        self.groups[g]
                            .servers
                            .iter()
                            .position(|s| s.spec.addr == server.spec.addr)?,
                    ))
                });
            match target {
                Some((g, s)) => {
                    self.idle_count += server.idle.len();
                    self.groups[g].servers[s].idle = server.idle;
                }
                None => {
                    for idle in server.idle {
                        host.close(now, idle.conn);
                    }
                }
            }
        }
    }

    /// Swaps in the `mh` groups' tables of a new snapshot (an `Arc` swap, between batches).
    pub fn use_maglev(&mut self, tables: &MaglevTables) {
        for (i, g) in self.groups.iter_mut().enumerate() {
            if let (Scheduler::Mh(mh), Some(table)) = (&mut g.scheduler, tables.get(i)) {
                mh.set_table(table.clone());
            }
        }
    }

    /// The Maglev table an `mh` group schedules with.
    pub fn maglev_table(&self, group: GroupId) -> Option<&Arc<MaglevTable>> {
        match &self.groups.get(group.0)?.scheduler {
            Scheduler::Mh(mh) => Some(mh.table()),
            _ => None,
        }
    }

    /// The address of a server.
    pub fn addr(&self, group: GroupId, server: usize) -> Option<SocketAddrV4> {
        Some(self.groups.get(group.0)?.servers.get(server)?.spec.addr)
    }

    /// The TLS towards the servers of `group`, if it has any.
    pub fn tls(&self, group: GroupId) -> Option<&Arc<UpstreamTls>> {
        self.groups.get(group.0)?.tls.as_ref()
    }

    /// Idle connections kept.
    pub fn idle_count(&self) -> usize {
        self.idle_count
    }

    /// Picks a server of `group` for a request from `client`: the sticky one if it is available, else by the
    /// group's scheduler among the available ones.
    pub fn pick(&mut self, group: GroupId, sticky: Option<ServerId>, client: SocketAddrV4) -> Option<usize> {
        let g = self.group_now(group)?;
        if let Some(ServerId(s)) = sticky {
            if g.views.get(s as usize).is_some_and(ServerView::available) {
                return Some(s as usize);
            }
        }
        g.scheduler.pick(&g.views, client)
    }

    /// The group with its views (and scheduler) brought up to the health board's generation.
    fn group_now(&mut self, group: GroupId) -> Option<&mut Group> {
        let board = &self.board;
        let g = self.groups.get_mut(group.0)?;
        let generation = board.generation();
        if generation != g.seen {
            for (v, s) in g.views.iter_mut().zip(&g.servers) {
                *v = server_view(&s.spec, board);
            }
            // An `mh` table is never built here: the next snapshot brings it, and until then its picks skip
            // the servers that are down.
            if !matches!(g.scheduler, Scheduler::Mh(_)) {
                g.scheduler.rebuild(&g.views);
            }
            g.seen = generation;
        }
        Some(g)
    }

    /// Picks a server for a request whose `hash` key hashes to `key`: the sticky one if it is available, else
    /// by weighted rendezvous hashing among the available servers not in `failed` (all of them if every
    /// available one failed).
    fn pick_by_key(&mut self, group: GroupId, sticky: Option<ServerId>, key: u64, failed: &[usize]) -> Option<usize> {
        let g = self.group_now(group)?;
        if let Some(ServerId(s)) = sticky {
            if g.views.get(s as usize).is_some_and(ServerView::available) {
                return Some(s as usize);
            }
        }
        let hashed = |avoid: bool| {
            rendezvous(
                key,
                g.views.iter().enumerate().map(|(i, v)| {
                    let usable = v.available() && !(avoid && failed.contains(&i));
                    usable.then(|| (server_identity(v.addr), v.weight))
                }),
            )
        };
        hashed(true).or_else(|| hashed(false))
    }

    /// [`Upstreams::pick`] (or consistent hashing on the request's `affinity` key), avoiding the servers in
    /// `failed` while another is available (a retry).
    pub fn pick_avoiding(
        &mut self,
        group: GroupId,
        sticky: Option<ServerId>,
        affinity: Option<u64>,
        client: SocketAddrV4,
        failed: &[usize],
    ) -> Option<usize> {
        let sticky = sticky.filter(|s| !failed.contains(&(s.0 as usize)));
        if let Some(key) = affinity {
            return self.pick_by_key(group, sticky, key, failed);
        }
        let servers = self.groups.get(group.0)?.servers.len();
        let mut first = None;
        for _ in 0..servers.max(1) {
            let s = self.pick(group, sticky, client)?;
            if !failed.contains(&s) {
                return Some(s);
            }
            first.get_or_insert(s);
        }
        first
    }

    /// A local port of this worker for a new connection from `local_ip` to `server`, taken from the worker's
    /// pools (rotating through the range, so a tuple is not reused while the server may still hold it). Given
    /// back by [`release_port`] once the connection is gone.
    pub fn local_port(ports: &mut LocalPorts, local_ip: Ipv4Addr, server: SocketAddrV4) -> Option<u16> {
        ports.take_upstream(local_ip, server).ok()
    }

    /// An idle kept connection to the server, still established with nothing received since, if there is one.
    pub fn take_idle(&mut self, now: Instant, host: &mut TcpHost, group: GroupId, server: usize) -> Option<IdleConn> {
        let s = self.groups.get_mut(group.0)?.servers.get_mut(server)?;
        while let Some(idle) = s.idle.pop_back() {
            self.idle_count -= 1;
            let clean = host.state(idle.conn) == Some(State::Established)
                && host.socket(now, idle.conn).is_some_and(|sock| sock.recv_queue() == 0);
            if clean {
                return Some(idle);
            }
            host.abort(now, idle.conn);
        }
        None
    }

    /// Keeps an idle connection (and its TLS) to the server for reuse; `false` if it is not kept (the caller
    /// closes it).
    pub fn keep_idle(
        &mut self,
        now: Instant,
        group: GroupId,
        server: usize,
        conn: ConnId,
        tls: Option<Box<TlsLink>>,
    ) -> bool {
        let keepalive = self.keepalive;
        let Some(s) = self.groups.get_mut(group.0).and_then(|g| g.servers.get_mut(server)) else {
            return false;
        };
        if s.idle.len() >= keepalive {
            return false;
        }
        s.idle.push_back(IdleConn { conn, tls, since: now });
        self.idle_count += 1;
        true
    }

    /// Something happened on an idle connection (the server closed it or sent bytes): it is dropped from the
    /// pool and closed — unless it speaks TLS and what came were only TLS messages that carry no data (a
    /// server's session tickets, which NGINX sends after its first response).
    pub fn idle_event(&mut self, now: Instant, host: &mut TcpHost, group: GroupId, server: usize, conn: ConnId) {
        let Some(s) = self.groups.get_mut(group.0).and_then(|g| g.servers.get_mut(server)) else {
            return;
        };
        let Some(i) = s.idle.iter().position(|idle| idle.conn == conn) else {
            return;
        };
        if let Some(tls) = s.idle[i].tls.as_deref_mut() {
            if let Some(socket) = host.socket(now, conn) {
                tls.receive(socket);
            }
            let quiet = host.state(conn) == Some(State::Established)
                && host.socket(now, conn).is_some_and(|sock| sock.recv_queue() == 0);
            if quiet && tls.is_clean() {
                return;
            }
        }
        s.idle.remove(i);
        self.idle_count -= 1;
        host.close(now, conn);
    }

    /// Closes idle connections older than the idle timeout.
    pub fn expire_idle(&mut self, now: Instant, host: &mut TcpHost) {
        for s in self.groups.iter_mut().flat_map(|g| g.servers.iter_mut()) {
            while let Some(idle) = s.idle.front() {
                if now.saturating_duration_since(idle.since) < self.idle_timeout {
                    break;
                }
                let conn = idle.conn;
                s.idle.pop_front();
                self.idle_count -= 1;
                host.close(now, conn);
            }
        }
    }
}

/// How long a server may hold a tuple in TIME-WAIT after it closed first (Linux: 60 s).
pub const SERVER_TIME_WAIT: Duration = Duration::from_secs(60);

/// Gives back the local port of an upstream connection that is gone: at once if this side closed first (it
/// ran the TIME-WAIT), else quarantined for the server's TIME-WAIT ([`SERVER_TIME_WAIT`]), so neither an L4
/// flow nor another upstream connection meets the server's old tuple.
pub fn release_port(ports: &mut LocalPorts, now: Instant, gone: Gone) {
    let until = gone.peer_may_wait.then(|| now + SERVER_TIME_WAIT);
    let local = gone.tuple.local;
    ports.give_back_upstream(*local.ip(), gone.tuple.remote, local.port(), until);
}

/// A server of a group as the schedulers see it: weight from the spec, health from the board.
pub fn server_view(s: &ServerSpec, board: &HealthBoard) -> ServerView {
    ServerView {
        addr: s.addr,
        weight: s.weight,
        healthy: s.target.is_none_or(|t| board.is_up(t)),
        active: 0,
        inactive: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpConfig;

    fn specs() -> Vec<GroupSpec> {
        vec![GroupSpec {
            name: "web".into(),
            scheduler: SchedulerKind::Rr,
            servers: (1..=3)
                .map(|i| ServerSpec {
                    addr: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, i), 8080),
                    weight: 1,
                    target: Some(usize::from(i) - 1),
                })
                .collect(),
            tls: None,
        }]
    }

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40_000);

    #[test]
    fn picks_follow_health_and_sticky_servers_while_they_are_up() {
        let board = Arc::new(HealthBoard::new(3));
        let mut u = Upstreams::new(
            &specs(),
            board.clone(),
            &MaglevTables::default(),
            4,
            Duration::from_secs(60),
        );
        let g = GroupId(0);
        let picks: Vec<_> = (0..6).map(|_| u.pick(g, None, CLIENT).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 2, "{picks:?}");
        board.set(1, false);
        assert!(
            (0..6).all(|_| u.pick(g, None, CLIENT) != Some(1)),
            "a down server is not picked"
        );
        assert_eq!(u.pick(g, Some(ServerId(2)), CLIENT), Some(2), "sticky");
        assert_ne!(
            u.pick(g, Some(ServerId(1)), CLIENT),
            Some(1),
            "sticky to a down server: another"
        );
        for t in 0..3 {
            board.set(t, false);
        }
        assert_eq!(u.pick(g, None, CLIENT), None);
        assert_eq!(u.pick(GroupId(5), None, CLIENT), None, "unknown group");
    }

    #[test]
    fn a_hash_key_keeps_its_server_and_moves_only_when_that_server_fails_or_goes_down() {
        let board = Arc::new(HealthBoard::new(3));
        let mut u = Upstreams::new(
            &specs(),
            board.clone(),
            &MaglevTables::default(),
            4,
            Duration::from_secs(60),
        );
        let g = GroupId(0);
        let homes: Vec<usize> = (0..30u64)
            .map(|k| u.pick_avoiding(g, None, Some(k * 7919), CLIENT, &[]).unwrap())
            .collect();
        for (k, &home) in homes.iter().enumerate() {
            let key = Some(k as u64 * 7919);
            assert_eq!(
                u.pick_avoiding(g, None, key, CLIENT, &[]),
                Some(home),
                "same key, same server"
            );
            let retry = u.pick_avoiding(g, None, key, CLIENT, &[home]).unwrap();
            assert_ne!(retry, home, "a retry avoids the server that failed");
            assert_eq!(
                u.pick_avoiding(g, Some(ServerId(2)), key, CLIENT, &[]),
                Some(2),
                "a sticky cookie wins"
            );
        }
        assert!(
            (0..3).all(|s| homes.contains(&s)),
            "30 keys reach all 3 servers: {homes:?}"
        );
        board.set(1, false);
        for (k, &home) in homes.iter().enumerate() {
            let now = u.pick_avoiding(g, None, Some(k as u64 * 7919), CLIENT, &[]).unwrap();
            if home == 1 {
                assert_ne!(now, 1, "the down server's keys move");
            } else {
                assert_eq!(now, home, "the other keys stay");
            }
        }
    }

    #[test]
    fn local_ports_are_this_workers_and_free() {
        let now = Instant::now();
        let board = Arc::new(HealthBoard::new(3));
        let u = Upstreams::new(&specs(), board, &MaglevTables::default(), 4, Duration::from_secs(60));
        let lip = Ipv4Addr::new(198, 19, 0, 10);
        let mut ports = LocalPorts::new(&[lip], 62_000, 62_009, 1, 2);
        let mut host = TcpHost::new(TcpConfig::default(), now, 1);
        let server = u.addr(GroupId(0), 0).unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            let p = Upstreams::local_port(&mut ports, lip, server).unwrap();
            assert_eq!(p % 2, 1, "worker 1 of 2 takes odd ports");
            host.connect(now, SocketAddrV4::new(lip, p), server, 1).unwrap();
            got.push(p);
        }
        got.sort();
        assert_eq!(got, vec![62_001, 62_003, 62_005, 62_007, 62_009]);
        assert_eq!(Upstreams::local_port(&mut ports, lip, server), None, "all five held");
        let other = u.addr(GroupId(0), 1).unwrap();
        assert!(
            Upstreams::local_port(&mut ports, lip, other).is_some(),
            "ports are per server"
        );
    }

    #[test]
    fn a_gone_connections_port_comes_back_at_once_or_after_the_servers_time_wait() {
        let now = Instant::now();
        let lip = Ipv4Addr::new(198, 19, 0, 10);
        let server = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 8080);
        let mut ports = LocalPorts::new(&[lip], 62_000, 62_001, 0, 1);
        let a = Upstreams::local_port(&mut ports, lip, server).unwrap();
        let b = Upstreams::local_port(&mut ports, lip, server).unwrap();
        assert_eq!(Upstreams::local_port(&mut ports, lip, server), None);
        let gone = |port, peer_may_wait| Gone {
            tuple: crate::tcp::Tuple {
                local: SocketAddrV4::new(lip, port),
                remote: server,
            },
            peer_may_wait,
        };
        release_port(&mut ports, now, gone(a, false));
        assert_eq!(
            Upstreams::local_port(&mut ports, lip, server),
            Some(a),
            "we ran the TIME-WAIT: free at once"
        );
        release_port(&mut ports, now, gone(b, true));
        assert!(!ports.is_upstream(lip, server, b), "replies to it are no one's");
        ports.release_due(now + SERVER_TIME_WAIT - Duration::from_secs(1));
        assert_eq!(
            Upstreams::local_port(&mut ports, lip, server),
            None,
            "the server may still hold the tuple"
        );
        ports.release_due(now + SERVER_TIME_WAIT);
        assert_eq!(Upstreams::local_port(&mut ports, lip, server), Some(b));
    }

    #[test]
    fn idle_connections_are_bounded_taken_once_and_expire() {
        let now = Instant::now();
        let board = Arc::new(HealthBoard::new(3));
        let mut u = Upstreams::new(&specs(), board, &MaglevTables::default(), 2, Duration::from_secs(60));
        let mut host = TcpHost::new(TcpConfig::default(), now, 1);
        let server = u.addr(GroupId(0), 0).unwrap();
        let lip = Ipv4Addr::new(198, 19, 0, 10);
        let conns: Vec<_> = (0..3)
            .map(|i| {
                host.connect(now, SocketAddrV4::new(lip, 62_000 + i), server, 1)
                    .unwrap()
            })
            .collect();
        assert!(u.keep_idle(now, GroupId(0), 0, conns[0], None));
        assert!(u.keep_idle(now, GroupId(0), 0, conns[1], None));
        assert!(!u.keep_idle(now, GroupId(0), 0, conns[2], None), "keepalive = 2");
        assert_eq!(u.idle_count(), 2);
        // Not established (these never completed a handshake): not handed out, closed instead.
        assert!(u.take_idle(now, &mut host, GroupId(0), 0).is_none());
        assert_eq!(u.idle_count(), 0);
        assert!(u.keep_idle(now, GroupId(0), 0, conns[2], None));
        u.expire_idle(now + Duration::from_secs(59), &mut host);
        assert_eq!(u.idle_count(), 1);
        u.expire_idle(now + Duration::from_secs(60), &mut host);
        assert_eq!(u.idle_count(), 0);
    }
}
